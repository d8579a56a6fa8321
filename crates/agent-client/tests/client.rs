//! The agent client against a fake agent behind a hybrid-vsock shim.

mod common;

use common::{wait_for, AgentSpec, FakeAgent, Rig, Shim};
use locale2b_agent_client::{hybrid_vsock_connect, AgentClient, ClientConfig, ClientError};
use locale2b_protocol::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(150),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn exec_req(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        working_dir: None,
        env: Default::default(),
        stdin_b64: None,
        timeout_ms: None,
        user: None,
        max_output_bytes: None,
    }
}

#[tokio::test]
async fn connect_handshake_and_typed_calls() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());

    let hello = client.hello().await.expect("hello");
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.agent_version, "0.0.1-fake");
    assert_eq!(client.agent_info(), Some(hello));

    let pong = client.ping().await.expect("ping");
    assert_eq!(pong.agent_version, "0.0.1-fake");

    let mut req = exec_req("echo hi");
    req.timeout_ms = Some(3000);
    let out = client
        .exec(req, Duration::from_secs(3))
        .await
        .expect("exec");
    assert_eq!(out.stdout, "echo hi");
    // The command timeout reaches the agent as the caller set it.
    assert_eq!(out.stderr, "timeout_ms=Some(3000)");

    let content = client
        .read_file(ReadFileRequest {
            path: "/etc/hostname".into(),
            offset: 0,
            length: None,
        })
        .await
        .expect("read_file");
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(content.content_b64)
            .expect("base64"),
        b"/etc/hostname"
    );

    let written = client
        .write_file(WriteFileRequest {
            path: "/workspace/x".into(),
            content: "abc".into(),
            encoding: ContentEncoding::Utf8,
            mode: None,
            create_parents: false,
            append: false,
            owner: None,
            in_place: false,
        })
        .await
        .expect("write_file");
    assert_eq!((written.path.as_str(), written.size), ("/workspace/x", 3));

    let listing = client
        .list_files(ListFilesRequest {
            path: "/workspace".into(),
            recursive: false,
            max_depth: None,
            max_entries: None,
        })
        .await
        .expect("list_files");
    assert_eq!(listing.entries[0].path, "/workspace/a");
    let made = client
        .mkdir(MkdirRequest {
            path: "/workspace/d".into(),
            parents: true,
            mode: None,
            owner: None,
        })
        .await
        .expect("mkdir");
    assert_eq!(made.name, "d");
    assert_eq!(client.stat("/workspace/x").await.expect("stat").name, "x");
    client
        .delete_file(DeleteFileRequest {
            path: "/workspace/x".into(),
            recursive: false,
        })
        .await
        .expect("delete");
    client.rename("/a", "/b").await.expect("rename");
    client
        .init(InitRequest {
            sandbox_id: "sb-1".into(),
            workspace_id: None,
            hostname: None,
            unix_time_ms: None,
            env: Default::default(),
            entropy_b64: None,
            process_retention_sec: None,
            network: None,
        })
        .await
        .expect("init");
    client.sync().await.expect("sync");

    // Sequential requests share one connection.
    let state = rig.state();
    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(rig.shim.connects(), 1);

    client.shutdown().await.expect("shutdown");
    assert_eq!(
        client.idle_connections(),
        0,
        "shutdown invalidates the pool"
    );
}

#[tokio::test]
async fn error_frames_and_wrong_response_types() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    let err = client
        .read_file(ReadFileRequest {
            path: "/missing".into(),
            offset: 0,
            length: None,
        })
        .await
        .expect_err("not found");
    assert_eq!(err.code(), "not_found");
    assert_eq!(err.agent_error().map(|b| b.code), Some(ErrorCode::NotFound));
    assert!(!err.is_retryable());

    let err = client.stat("/wrong-type").await.expect_err("done for stat");
    assert!(
        matches!(err, ClientError::Protocol(ref m) if m.contains("stat") && m.contains("done")),
        "{err:?}"
    );
    // An error frame leaves the connection usable.
    client.ping().await.expect("ping after errors");
    assert_eq!(rig.state().connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wait_ready_retries_silent_connects_until_agent_answers() {
    let rig = Rig::new(AgentSpec::default());
    // The first three CONNECTs get no reply and no close.
    rig.shim.silent_remaining.store(3, Ordering::SeqCst);
    let client = AgentClient::new(&rig.shim.path, config());
    let ready = client
        .wait_ready(Instant::now() + Duration::from_secs(10))
        .await
        .expect("ready");
    assert_eq!(ready.attempts, 4);
    assert_eq!(rig.shim.connects(), 4);
    assert_eq!(ready.pong.agent_version, "0.0.1-fake");
    // Each silent attempt cost one handshake timeout.
    assert!(ready.elapsed >= Duration::from_millis(3 * 150), "{ready:?}");
    // The ready connection is pooled and reused.
    client.ping().await.expect("ping");
    assert_eq!(rig.shim.connects(), 4);
}

#[tokio::test]
async fn wait_ready_succeeds_soon_after_the_guest_comes_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_path = dir.path().join("agent.sock");
    let shim = Shim::start(
        &dir.path().join("vsock.sock"),
        AGENT_VSOCK_PORT,
        &agent_path,
    );
    shim.silent.store(true, Ordering::SeqCst);
    let client = AgentClient::new(&shim.path, config());
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            let r = client
                .wait_ready(Instant::now() + Duration::from_secs(10))
                .await;
            (r, Instant::now())
        })
    };
    // Guest boots: vsock driver silent for a few attempts, then the agent is
    // up and the driver answers.
    wait_for("two silent attempts", Duration::from_secs(5), || {
        shim.connects() >= 2
    })
    .await;
    let _agent = FakeAgent::start(&agent_path, AgentSpec::default());
    shim.silent.store(false, Ordering::SeqCst);
    let up_at = Instant::now();
    let (ready, ready_at) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_ready returns")
        .expect("join");
    let ready = ready.expect("ready");
    assert!(ready.attempts >= 3, "{ready:?}");
    // At most one pending handshake timeout plus one backoff step, with slack.
    let lag = ready_at.duration_since(up_at);
    assert!(lag < Duration::from_millis(1500), "lag {lag:?}");
}

#[tokio::test]
async fn unserved_port_retries_then_fails_at_the_deadline() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::with_port(&rig.shim.path, 5001, config());
    let start = Instant::now();
    let err = client
        .wait_ready(Instant::now() + Duration::from_millis(500))
        .await
        .expect_err("nobody serves 5001");
    let took = start.elapsed();
    match &err {
        ClientError::NotReady { attempts, last, .. } => {
            assert!(*attempts > 1, "retried: {attempts}");
            assert!(
                matches!(**last, ClientError::Handshake(ref m) if m.contains("closed")),
                "{last:?}"
            );
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(err.is_timeout());
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(err.to_string().contains("not ready"), "{err}");

    // A socket file that does not exist: the last error is Connect.
    let client = AgentClient::new(rig.dir.path().join("nope.sock"), config());
    let err = client
        .wait_ready(Instant::now() + Duration::from_millis(200))
        .await
        .expect_err("no socket");
    assert!(
        matches!(err, ClientError::NotReady { ref last, .. } if matches!(**last, ClientError::Connect { .. })),
        "{err:?}"
    );
    // A single request fails after connect_attempts.
    let err = client.ping().await.expect_err("no socket");
    assert_eq!(err.code(), "connect");
}

#[tokio::test]
async fn reconnects_after_guest_restart() {
    let mut rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    // Fill the pool with three connections.
    let pings: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.ping().await })
        })
        .collect();
    for p in pings {
        p.await.expect("join").expect("ping");
    }
    assert!(client.idle_connections() >= 1);

    // The guest restarts: every connection dies, a new agent comes up.
    rig.agent.take().expect("agent").kill().await;
    let shim_active = rig.shim.active.clone();
    wait_for("shim connections to close", Duration::from_secs(5), || {
        shim_active.load(Ordering::SeqCst) == 0
    })
    .await;
    let agent = FakeAgent::start(
        &rig.agent_path(),
        AgentSpec {
            agent_version: "0.0.2-restarted".into(),
            ..AgentSpec::default()
        },
    );
    let state = agent.state.clone();
    rig.agent = Some(agent);

    // Without invalidate(): the stale pooled connections are detected and
    // the requests (even a non-idempotent one) go out on a fresh connection.
    let pong = client.ping().await.expect("ping after restart");
    assert_eq!(pong.agent_version, "0.0.2-restarted");
    let out = client
        .exec(exec_req("true"), Duration::from_secs(5))
        .await
        .expect("exec");
    assert_eq!(out.stdout, "true");
    assert_eq!(state.count("exec"), 1);
    assert_eq!(
        client.agent_info().map(|h| h.agent_version).as_deref(),
        Some("0.0.2-restarted")
    );

    client.invalidate();
    assert_eq!(client.idle_connections(), 0);
    client.ping().await.expect("ping after invalidate");
    assert_eq!(state.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn incompatible_agent_is_refused_without_retries() {
    let rig = Rig::new(AgentSpec {
        protocol_version: PROTOCOL_VERSION + 5,
        min_protocol_version: PROTOCOL_VERSION + 3,
        agent_version: "9.0.0".into(),
    });
    let client = AgentClient::new(&rig.shim.path, config());
    let start = Instant::now();
    let err = client
        .wait_ready(Instant::now() + Duration::from_secs(5))
        .await
        .expect_err("incompatible");
    assert!(start.elapsed() < Duration::from_secs(2));
    match &err {
        ClientError::IncompatibleAgent {
            agent_version,
            agent_protocol,
            ours,
            ..
        } => {
            assert_eq!(agent_version, "9.0.0");
            assert_eq!(*agent_protocol, PROTOCOL_VERSION + 5);
            assert_eq!(*ours, PROTOCOL_VERSION);
        }
        other => panic!("expected IncompatibleAgent, got {other:?}"),
    }
    let state = rig.state();
    assert_eq!(state.count("hello"), 1);
    assert_eq!(state.count("ping"), 0);

    let err = client.ping().await.expect_err("incompatible");
    assert_eq!(err.code(), "incompatible_agent");
    assert_eq!(state.count("hello"), 2, "one attempt, no retries");
    assert_eq!(state.count("ping"), 0);
    assert!(err.to_string().contains("9.0.0"), "{err}");
}

#[tokio::test]
async fn request_timeout_drops_the_connection() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    client.ping().await.expect("warm up");
    let start = Instant::now();
    let err = client
        .exec(exec_req("hang"), Duration::from_millis(300))
        .await
        .expect_err("agent never answers");
    let took = start.elapsed();
    assert!(
        matches!(err, ClientError::Timeout { ref what, after } if what == "exec" && after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let state = rig.state();
    assert_eq!(state.count("exec"), 1, "timed-out exec not re-sent");
    assert_eq!(client.idle_connections(), 0, "timed-out connection dropped");

    client.ping().await.expect("next request works");
    assert_eq!(
        state.connections.load(Ordering::SeqCst),
        2,
        "on a fresh connection"
    );

    // A generic call with an explicit timeout.
    let err = client
        .call(
            Request::Exec(exec_req("hang")),
            Some(Duration::from_millis(50)),
        )
        .await
        .expect_err("timeout");
    assert!(err.is_timeout() && err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pings() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.ping().await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("ping");
    }
    let state = rig.state();
    assert_eq!(state.count("ping"), 50);
    assert!(
        client.idle_connections() <= 8,
        "{}",
        client.idle_connections()
    );
    let opened = state.connections.load(Ordering::SeqCst);
    assert!((1..=50).contains(&opened), "{opened}");
    // After the burst, sequential requests reuse pooled connections.
    for _ in 0..10 {
        client.ping().await.expect("ping");
    }
    assert_eq!(state.connections.load(Ordering::SeqCst), opened);
}

#[tokio::test]
async fn non_idempotent_request_is_not_resent_after_disconnect() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    client.ping().await.expect("warm up");
    let state = rig.state();

    // The pooled connection dies after the agent received the exec.
    state.drop_next_request.store(true, Ordering::SeqCst);
    let err = client
        .exec(exec_req("touch /once"), Duration::from_secs(5))
        .await
        .expect_err("connection lost mid-request");
    assert!(
        matches!(err, ClientError::Io(_) | ClientError::Frame(_)),
        "{err:?}"
    );
    assert_eq!(state.count("exec"), 1, "exec must not be re-sent");

    // Same for write_file.
    state.drop_next_request.store(true, Ordering::SeqCst);
    client
        .write_file(WriteFileRequest {
            path: "/f".into(),
            content: "x".into(),
            encoding: ContentEncoding::Utf8,
            mode: None,
            create_parents: false,
            append: true,
            owner: None,
            in_place: false,
        })
        .await
        .expect_err("connection lost");
    assert_eq!(state.count("write_file"), 1);
}

#[tokio::test]
async fn idempotent_request_is_resent_once_after_disconnect() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(&rig.shim.path, config());
    client.ping().await.expect("warm up");
    let state = rig.state();
    state.drop_next_request.store(true, Ordering::SeqCst);
    let info = client.stat("/etc").await.expect("stat re-sent");
    assert_eq!(info.path, "/etc");
    assert_eq!(state.count("stat"), 2, "sent, lost, sent again once");
    assert_eq!(state.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn hybrid_vsock_connect_helper() {
    let rig = Rig::new(AgentSpec::default());
    let mut stream = hybrid_vsock_connect(&rig.shim.path, AGENT_VSOCK_PORT, Duration::from_secs(2))
        .await
        .expect("connect");
    use locale2b_protocol::frame::{parse_response, read_frame, write_json};
    write_json(
        &mut stream,
        &RequestFrame {
            id: 7,
            request: Request::Ping,
        },
        DEFAULT_MAX_FRAME,
    )
    .await
    .expect("write");
    let payload = read_frame(&mut stream, DEFAULT_MAX_FRAME)
        .await
        .expect("read")
        .expect("frame");
    let resp = parse_response(&payload).expect("parse");
    assert_eq!(resp.id, 7);
    assert!(matches!(resp.outcome, Outcome::Ok(Response::Pong(_))));

    rig.shim.silent.store(true, Ordering::SeqCst);
    let err = hybrid_vsock_connect(&rig.shim.path, AGENT_VSOCK_PORT, Duration::from_millis(100))
        .await
        .expect_err("silent");
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test]
async fn a_slow_connect_reply_is_waited_for_once_the_agent_answered() {
    let rig = Rig::new(AgentSpec::default());
    let cfg = ClientConfig {
        ready_handshake_timeout: Duration::from_secs(3),
        // Every request opens a new connection.
        max_idle_age: Duration::ZERO,
        connect_attempts: 1,
        ..config()
    };
    // Slower than `handshake_timeout` (150 ms), well within the ready one.
    rig.shim.reply_delay_ms.store(400, Ordering::SeqCst);
    let booting = AgentClient::new(&rig.shim.path, cfg.clone());
    let err = booting.ping().await.expect_err("not known to be up yet");
    assert!(err.is_timeout(), "{err:?}");

    rig.shim.reply_delay_ms.store(0, Ordering::SeqCst);
    let client = AgentClient::new(&rig.shim.path, cfg);
    client.ping().await.expect("first ping");
    rig.shim.reply_delay_ms.store(400, Ordering::SeqCst);
    let before = rig.shim.connects();
    for _ in 0..2 {
        client.ping().await.expect("slow but answered");
    }
    // Each ping went through its own slow `CONNECT`.
    assert_eq!(rig.shim.connects(), before + 2);
}

#[tokio::test]
async fn idle_connections_past_max_age_are_not_reused() {
    let rig = Rig::new(AgentSpec::default());
    let client = AgentClient::new(
        &rig.shim.path,
        ClientConfig {
            max_idle_age: Duration::ZERO,
            ..config()
        },
    );
    for _ in 0..3 {
        client.ping().await.expect("ping");
    }
    assert_eq!(rig.state().connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_v1_agent_is_used_for_v1_requests_and_refuses_v2_ones_clearly() {
    let rig = Rig::new(AgentSpec {
        protocol_version: 1,
        min_protocol_version: 1,
        agent_version: "0.0.1-v1".into(),
    });
    let client = AgentClient::new(&rig.shim.path, config());
    // A v2 host and a v1 agent agree on v1: the old requests work.
    client.ping().await.expect("ping a v1 agent");
    let err = client
        .process_start(ProcessStartRequest {
            command: Some("true".into()),
            ..ProcessStartRequest::default()
        })
        .await
        .expect_err("v1 agent has no process table");
    match &err {
        ClientError::Unsupported {
            action,
            needs,
            agent_protocol,
        } => {
            assert_eq!((*action, *needs, *agent_protocol), ("process_start", 2, 1));
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("rebuild the guest image"), "{err}");
    let err = client
        .process_output(
            ProcessOutputRequest {
                process: ProcessSelector::Pid(1),
                cursor: 0,
                max_bytes: None,
                follow: true,
            },
            Duration::from_secs(1),
        )
        .await
        .expect_err("no streams on v1");
    assert!(matches!(err, ClientError::Unsupported { .. }), "{err:?}");
    // Nothing was sent: the agent only ever saw hello and ping.
    assert_eq!(rig.state().count("process_start"), 0);
}
