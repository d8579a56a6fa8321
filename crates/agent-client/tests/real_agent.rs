//! The client against the real guest agent binary (`locale2b-agent serve
//! --unix PATH`) behind the hybrid-vsock shim. Skipped with a printed
//! "SKIPPED" line when the binary has not been built
//! (`cargo build -p locale2b-agent`); `LOCALE2B_AGENT_BIN` overrides its path.
//! With `LOCALE2B_REQUIRE_E2E=1` a missing or unusable binary fails the test.

mod common;

use common::{wait_for, Shim};
use locale2b_agent_client::{AgentClient, ClientConfig};
use locale2b_protocol::*;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LOCALE2B_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug/locale2b-agent")
}

fn skip(reason: &str) {
    locale2b_testkit::require_or_skip(reason);
}

fn exec_req(command: &str, timeout_ms: Option<u64>) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        working_dir: None,
        env: Default::default(),
        stdin_b64: None,
        timeout_ms,
        user: None,
        max_output_bytes: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_behind_shim() {
    let bin = agent_binary();
    if !bin.is_file() {
        skip(&format!(
            "{} not found (run `cargo build -p locale2b-agent`)",
            bin.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_sock = dir.path().join("agent.sock");
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--unix"])
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent");

    // Wait for the socket; an agent without `serve --unix` exits at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if agent_sock.exists() {
            break;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            skip(&format!(
                "{} exited with {status} before serving (no `serve --unix` yet?)",
                bin.display()
            ));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent socket {} did not appear within 10 s",
            agent_sock.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let shim = Shim::start(
        &dir.path().join("vsock.sock"),
        AGENT_VSOCK_PORT,
        &agent_sock,
    );
    let client = AgentClient::new(&shim.path, ClientConfig::default());
    let ready = client
        .wait_ready(Instant::now() + Duration::from_secs(10))
        .await
        .expect("real agent ready");
    assert!(!ready.pong.agent_version.is_empty());
    let hello = client.hello().await.expect("hello");
    assert!(hello.min_protocol_version <= PROTOCOL_VERSION);

    let out = client
        .exec(
            exec_req("echo hi; echo err >&2; exit 3", None),
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out);

    // The agent's own timeout fires before the client's.
    let out = client
        .exec(exec_req("sleep 10", Some(300)), Duration::from_secs(5))
        .await
        .expect("exec with timeout");
    assert!(out.timed_out, "{out:?}");

    let file = dir.path().join("hello.txt");
    let file_s = file.to_string_lossy().to_string();
    let written = client
        .write_file(WriteFileRequest {
            path: file_s.clone(),
            content: "hello agent".into(),
            encoding: ContentEncoding::Utf8,
            mode: None,
            create_parents: false,
            append: false,
            owner: None,
            in_place: false,
        })
        .await
        .expect("write_file");
    assert_eq!(written.size, 11);
    let content = client
        .read_file(ReadFileRequest {
            path: file_s.clone(),
            offset: 0,
            length: None,
        })
        .await
        .expect("read_file");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&content.content_b64)
            .expect("base64"),
        b"hello agent"
    );
    assert_eq!(client.stat(file_s.clone()).await.expect("stat").size, 11);
    client
        .delete_file(DeleteFileRequest {
            path: file_s.clone(),
            recursive: false,
        })
        .await
        .expect("delete");
    let err = client.stat(file_s).await.expect_err("deleted");
    assert_eq!(err.code(), "not_found", "{err:?}");

    // 20 concurrent pings against the real agent.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.ping().await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("ping");
    }

    // The "guest" restarts: kill the agent, start a new one, ping again.
    child.kill().await.expect("kill agent");
    let _ = std::fs::remove_file(&agent_sock);
    let active = shim.active.clone();
    wait_for("shim connections to close", Duration::from_secs(5), || {
        active.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    let mut child = tokio::process::Command::new(&bin)
        .args(["serve", "--unix"])
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("respawn agent");
    client.invalidate();
    client
        .wait_ready(Instant::now() + Duration::from_secs(10))
        .await
        .expect("ready after restart");
    client.ping().await.expect("ping after restart");
    child.kill().await.expect("kill agent");
}
