//! `exec`, `init`, `hello`, `ping`, `sync` and `shutdown` against a real agent.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use base64::Engine as _;
use common::{TestAgent, WAIT};
use locale2b_protocol::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn exec_req(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        working_dir: None,
        env: BTreeMap::new(),
        stdin_b64: None,
        timeout_ms: None,
        user: None,
        max_output_bytes: None,
    }
}

async fn run(c: &mut common::Client, req: ExecRequest) -> ExecResponse {
    match c.call(Request::Exec(req)).await {
        Ok(Response::Exec(r)) => r,
        other => panic!("exec failed: {other:?}"),
    }
}

#[tokio::test]
async fn exec_basics_stdout_stderr_exit_cwd_stdin() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = run(&mut c, exec_req("echo out; echo err >&2; pwd; exit 3")).await;
    assert_eq!(r.stdout, format!("out\n{}\n", agent.workspace.display()));
    assert_eq!(r.stderr, "err\n");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.signal, None);
    assert!(!r.timed_out && !r.truncated);

    let mut req = exec_req("cat; pwd");
    req.stdin_b64 = Some(base64::engine::general_purpose::STANDARD.encode(b"from stdin\n"));
    req.working_dir = Some("/".into());
    let r = run(&mut c, req).await;
    assert_eq!(r.stdout, "from stdin\n/\n");
    assert_eq!(r.exit_code, Some(0));

    let r = run(&mut c, exec_req("sleep 0.3")).await;
    assert!(r.duration_ms >= 300, "{}", r.duration_ms);

    let r = run(&mut c, exec_req("kill -9 $$")).await;
    assert_eq!((r.exit_code, r.signal), (None, Some(9)));

    let mut req = exec_req("true");
    req.working_dir = Some("does/not/exist".into());
    let e = c.call(Request::Exec(req)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let mut req = exec_req("true");
    req.stdin_b64 = Some("@@@".into());
    let e = c.call(Request::Exec(req)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

#[tokio::test]
async fn exec_env_merges_init_defaults() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let mut env = BTreeMap::new();
    env.insert("FROM_INIT".to_string(), "init".to_string());
    env.insert("OVERRIDE".to_string(), "init".to_string());
    let done = c
        .call(Request::Init(InitRequest {
            sandbox_id: "sb-test123".into(),
            workspace_id: None,
            hostname: None,
            unix_time_ms: Some(1),
            env,
            entropy_b64: Some(base64::engine::general_purpose::STANDARD.encode([7u8; 64])),
            process_retention_sec: Some(60),
            network: None,
        }))
        .await
        .unwrap();
    assert_eq!(done, Response::Done);
    let mut req = exec_req("echo $FROM_INIT $OVERRIDE $ONLY_REQ; test -n \"$PATH\" && echo path");
    req.env.insert("OVERRIDE".into(), "req".into());
    req.env.insert("ONLY_REQ".into(), "r".into());
    let r = run(&mut c, req).await;
    assert_eq!(r.stdout, "init req r\npath\n");
    // The host clock was not touched (manage_system is off in tests).
    assert!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > 1_600_000_000
    );
    let Response::Pong(p) = c.call(Request::Ping).await.unwrap() else {
        panic!("no pong")
    };
    assert_eq!(p.sandbox_id.as_deref(), Some("sb-test123"));
    let e = c
        .call(Request::Init(InitRequest {
            sandbox_id: "sb-x".into(),
            workspace_id: None,
            hostname: None,
            unix_time_ms: None,
            env: BTreeMap::new(),
            entropy_b64: Some("***".into()),
            process_retention_sec: None,
            network: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .map(|i| stat[i + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let mut req = exec_req("sleep 1000 & echo $!; sleep 1000");
    req.timeout_ms = Some(500);
    let started = Instant::now();
    let r = run(&mut c, req).await;
    assert!(r.timed_out);
    assert_eq!(r.signal, Some(9));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let bg: i32 = r.stdout.trim().parse().expect("background pid");
    let deadline = Instant::now() + WAIT;
    while !process_gone(bg) {
        assert!(
            Instant::now() < deadline,
            "background child {bg} survived the timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_background_child_does_not_block_the_answer() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let started = Instant::now();
    let r = run(&mut c, exec_req("sleep 3 & echo started")).await;
    assert_eq!(r.stdout, "started\n");
    // Waiting for the pipe to close would take the 3 s of the sleep.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(!r.timed_out);
}

#[tokio::test]
async fn exec_output_is_capped() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = run(
        &mut c,
        exec_req("yes abcdefgh | head -c 20000000; echo tail >&2"),
    )
    .await;
    assert!(r.truncated);
    assert_eq!(r.stdout.len() as u64, DEFAULT_EXEC_OUTPUT_LIMIT);
    assert_eq!(r.stderr, "tail\n");
    assert_eq!(r.exit_code, Some(0));
    let mut req = exec_req("printf 0123456789");
    req.max_output_bytes = Some(4);
    let r = run(&mut c, req).await;
    assert_eq!(r.stdout, "0123");
    assert!(r.truncated);
}

#[tokio::test]
async fn exec_as_nobody_gets_permission_denied() {
    let agent = TestAgent::start().await;
    // Let nobody traverse the temp dirs, but not write the private dir.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.workspace, std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = agent.workspace.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = agent.client().await;
    let mut req = exec_req(&format!(
        "id -u; echo $HOME; touch '{}/x'",
        private.display()
    ));
    req.user = Some("nobody".into());
    let r = run(&mut c, req).await;
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("65534"));
    assert_eq!(lines.next(), Some("/nonexistent"));
    assert_ne!(r.exit_code, Some(0));
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(!private.join("x").exists());
    let mut req = exec_req("id -u");
    req.user = Some("65534".into());
    assert_eq!(run(&mut c, req).await.stdout, "65534\n");
    let mut req = exec_req("true");
    req.user = Some("no-such-user-here".into());
    let e = c.call(Request::Exec(req)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn hello_ping_sync() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = c
        .call(Request::Hello(HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            client: "test".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::Hello(HelloResponse {
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            agent_version: AGENT_VERSION.into(),
        })
    );
    let e = c
        .call(Request::Hello(HelloRequest {
            protocol_version: MIN_PROTOCOL_VERSION - 1,
            client: "old".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::IncompatibleVersion);
    let Response::Pong(p) = c.call(Request::Ping).await.unwrap() else {
        panic!("no pong")
    };
    assert_eq!(p.agent_version, AGENT_VERSION);
    assert_eq!(p.sandbox_id, None);
    assert_eq!(c.call(Request::Sync).await.unwrap(), Response::Done);
}

#[tokio::test]
async fn shutdown_answers_then_stops_the_listener() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    assert_eq!(c.call(Request::Shutdown).await.unwrap(), Response::Done);
    assert!(c.closed_by_agent().await);
    let res = tokio::time::timeout(WAIT, agent.task)
        .await
        .expect("serve_unix did not return");
    assert!(matches!(res, Ok(Ok(()))), "{res:?}");
    assert!(agent.ctx.shutdown_token().is_cancelled());
}
