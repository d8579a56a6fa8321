//! Connection-level behaviour: bad frames, oversize frames, half-close,
//! idle timeout, concurrency, and the real binary (memory stays bounded).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{wait_for_socket, Client, TestAgent, WAIT};
use locale2b_protocol::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

async fn assert_serving(c: &mut Client) {
    assert!(matches!(c.call(Request::Ping).await, Ok(Response::Pong(_))));
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_errors_and_the_connection_survives() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    c.send_raw(b"{this is not json").await;
    let f = c.recv().await;
    assert_eq!(f.id, 0);
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::MalformedFrame,
                ..
            })
        ),
        "{f:?}"
    );
    c.send_raw(&[0xff, 0xfe, 0x00]).await;
    let f = c.recv().await;
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::MalformedFrame,
                ..
            })
        ),
        "{f:?}"
    );
    c.send_raw(br#"{"id":41,"request":{"action":"teleport"}}"#)
        .await;
    let f = c.recv().await;
    assert_eq!(f.id, 41);
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::UnknownAction,
                ..
            })
        ),
        "{f:?}"
    );
    c.send_raw(br#"{"id":42,"request":{"action":"exec","cwd":"/"}}"#)
        .await;
    let f = c.recv().await;
    assert_eq!(f.id, 42);
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::InvalidRequest,
                ..
            })
        ),
        "{f:?}"
    );
    // A zero-length frame keeps the framing intact.
    c.stream.write_all(&[0, 0, 0, 0]).await.unwrap();
    let f = c.recv().await;
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::MalformedFrame,
                ..
            })
        ),
        "{f:?}"
    );
    assert_serving(&mut c).await;
}

#[tokio::test]
async fn oversize_frame_is_refused_and_closes_only_that_connection() {
    let agent = TestAgent::start_with(|c| c.max_frame = 4096).await;
    let mut other = agent.client().await;
    let mut c = agent.client().await;
    // Announce 1 GiB; send a little of it.
    c.stream
        .write_all(&(1u32 << 30).to_be_bytes())
        .await
        .unwrap();
    c.stream.write_all(b"{\"id\":1").await.unwrap();
    let f = c.recv().await;
    assert_eq!(f.id, 0);
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::TooLarge,
                ..
            })
        ),
        "{f:?}"
    );
    assert!(c.closed_by_agent().await);
    assert_serving(&mut other).await;
    let mut fresh = agent.client().await;
    assert_serving(&mut fresh).await;
}

#[tokio::test]
async fn answer_too_big_for_a_frame_becomes_too_large() {
    let agent = TestAgent::start_with(|c| c.max_frame = 8192).await;
    let mut c = agent.client().await;
    let req = ExecRequest {
        command: "head -c 100000 /dev/zero | tr '\\0' x".into(),
        working_dir: None,
        env: BTreeMap::new(),
        stdin_b64: None,
        timeout_ms: None,
        user: None,
        max_output_bytes: Some(1_000_000),
    };
    let e = c.call(Request::Exec(req)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert_serving(&mut c).await;
}

#[tokio::test]
async fn half_closed_and_truncated_connections_close_cleanly() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    assert_serving(&mut c).await;
    c.stream.shutdown().await.unwrap();
    assert!(c.closed_by_agent().await);
    let mut t = agent.client().await;
    t.stream.write_all(&[0, 0, 1, 0, b'{']).await.unwrap();
    t.stream.shutdown().await.unwrap();
    assert!(t.closed_by_agent().await);
    assert_serving(&mut agent.client().await).await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let agent = TestAgent::start_with(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut c = agent.client().await;
    assert_serving(&mut c).await;
    let started = Instant::now();
    assert!(c.closed_by_agent().await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fifty_concurrent_connections() {
    let agent = TestAgent::start().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let socket = agent.socket.clone();
        tasks.spawn(async move {
            let mut c = Client::connect(&socket).await;
            let req = ExecRequest {
                command: format!("sleep 0.2; echo {i}"),
                working_dir: None,
                env: BTreeMap::new(),
                stdin_b64: None,
                timeout_ms: Some(30_000),
                user: None,
                max_output_bytes: None,
            };
            match c.call(Request::Exec(req)).await {
                Ok(Response::Exec(r)) => (i, r.stdout),
                other => panic!("request {i}: {other:?}"),
            }
        });
    }
    let started = Instant::now();
    let mut seen = 0;
    while let Some(res) = tokio::time::timeout(WAIT, tasks.join_next())
        .await
        .expect("timed out")
    {
        let (i, out) = res.expect("task");
        assert_eq!(out, format!("{i}\n"));
        seen += 1;
    }
    assert_eq!(seen, 50);
    // Served concurrently: 50 × 0.2 s one after the other would take 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// The built binary, serving on a Unix socket; killed on drop.
struct BinaryAgent {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl BinaryAgent {
    async fn start(extra: &[&str], uid: Option<u32>) -> Self {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let socket = dir.path().join("agent.sock");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_locale2b-agent"));
        cmd.arg("serve")
            .arg("--unix")
            .arg(&socket)
            .args(extra)
            .arg("--workspace")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().expect("spawn agent binary");
        wait_for_socket(&socket).await;
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} missing"))
    }
}

impl Drop for BinaryAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn binary_caps_100_mib_of_output_with_bounded_memory() {
    let agent = BinaryAgent::start(&[], None).await;
    let mut c = Client::connect(&agent.socket).await;
    let req = ExecRequest {
        command: "head -c 104857600 /dev/zero | tr '\\0' a".into(),
        working_dir: None,
        env: BTreeMap::new(),
        stdin_b64: None,
        timeout_ms: Some(120_000),
        user: None,
        max_output_bytes: None,
    };
    let Ok(Response::Exec(r)) = c.call(Request::Exec(req)).await else {
        panic!("exec failed")
    };
    assert!(r.truncated);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.stdout.len() as u64, DEFAULT_EXEC_OUTPUT_LIMIT);
    assert!(r.stdout.bytes().all(|b| b == b'a'));
    let hwm = agent.status_kib("VmHWM:");
    eprintln!("agent VmHWM after 100 MiB of output: {hwm} kB");
    assert!(
        hwm < 64 * 1024,
        "agent peak RSS {hwm} kB for 100 MiB of output"
    );
}

#[tokio::test]
async fn binary_as_non_root_reports_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let agent = BinaryAgent::start(&[], Some(65534)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // nobody may enter the directory but not write it or read the file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Client::connect(&agent.socket).await;
    let e = c
        .call(Request::ReadFile(ReadFileRequest {
            path: secret.display().to_string(),
            offset: 0,
            length: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = c
        .call(Request::WriteFile(WriteFileRequest {
            path: dir.path().join("new").display().to_string(),
            content: "x".into(),
            encoding: ContentEncoding::Utf8,
            mode: None,
            create_parents: false,
            append: false,
            owner: None,
            in_place: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
}

#[tokio::test]
async fn binary_options_and_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locale2b-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("locale2b-agent {AGENT_VERSION}")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locale2b-agent"))
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let agent = BinaryAgent::start(&["--max-frame", "2048", "--idle-timeout-sec", "1"], None).await;
    let mut c = Client::connect(&agent.socket).await;
    c.stream.write_all(&4096u32.to_be_bytes()).await.unwrap();
    let f = c.recv().await;
    assert!(
        matches!(
            f.outcome,
            Outcome::Error(ErrorBody {
                code: ErrorCode::TooLarge,
                ..
            })
        ),
        "{f:?}"
    );
    let mut idle = Client::connect(&agent.socket).await;
    assert_serving(&mut idle).await;
    assert!(idle.closed_by_agent().await);
}
