//! Test doubles: a fake agent speaking the framed protocol on a Unix socket,
//! and a hybrid-vsock shim in front of it that behaves like Firecracker's
//! vsock socket (`CONNECT <port>\n` → `OK <n>\n`, then bytes both ways).

#![allow(dead_code)]

use base64::Engine as _;
use locale2b_protocol::frame::{parse_request, read_frame, write_json};
use locale2b_protocol::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the fake agent says about itself.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub protocol_version: u32,
    pub min_protocol_version: u32,
    pub agent_version: String,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: MIN_PROTOCOL_VERSION,
            agent_version: "0.0.1-fake".into(),
        }
    }
}

#[derive(Debug, Default)]
pub struct AgentState {
    /// Requests received, by action.
    counts: Mutex<HashMap<&'static str, u32>>,
    /// Connections accepted.
    pub connections: AtomicU32,
    /// When set, the next non-hello request is counted and its connection
    /// closed without an answer.
    pub drop_next_request: AtomicBool,
}

impl AgentState {
    pub fn count(&self, action: &str) -> u32 {
        self.counts
            .lock()
            .expect("counts")
            .get(action)
            .copied()
            .unwrap_or(0)
    }
}

/// A fake agent serving canned answers derived from each request:
/// - `exec`: stdout = the command; command `hang` is never answered.
/// - `read_file`: content = the path; `/missing` → `not_found`.
/// - `stat`: `/wrong-type` is answered with `done` (a protocol violation).
#[derive(Debug)]
pub struct FakeAgent {
    pub path: PathBuf,
    pub state: Arc<AgentState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeAgent {
    pub fn start(path: &Path, spec: AgentSpec) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind fake agent");
        let state = Arc::new(AgentState::default());
        let (stop, mut stopped) = oneshot::channel();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { break };
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(serve(stream, spec.clone(), st.clone(), started));
                    }
                }
            }
            // Close every connection before reporting the agent dead.
            conns.shutdown().await;
        });
        Self {
            path: path.to_path_buf(),
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops accepting, closes every connection and removes the socket file:
    /// the "guest" is gone.
    pub async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("fake agent task");
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(mut stream: UnixStream, spec: AgentSpec, state: Arc<AgentState>, started: Instant) {
    loop {
        let payload = match read_frame(&mut stream, DEFAULT_MAX_FRAME).await {
            Ok(Some(p)) => p,
            _ => return,
        };
        let frame = parse_request(&payload).expect("client sent a valid request");
        let action = frame.request.action();
        *state
            .counts
            .lock()
            .expect("counts")
            .entry(action)
            .or_default() += 1;
        if action != "hello" && state.drop_next_request.swap(false, Ordering::SeqCst) {
            return;
        }
        let outcome = match answer(frame.request, &spec, started) {
            Some(outcome) => outcome,
            None => {
                // Never answer, never close.
                std::future::pending::<()>().await;
                return;
            }
        };
        let response = ResponseFrame {
            id: frame.id,
            outcome,
        };
        if write_json(&mut stream, &response, DEFAULT_MAX_FRAME)
            .await
            .is_err()
        {
            return;
        }
    }
}

fn info(path: &str) -> FileInfo {
    FileInfo {
        name: path.rsplit('/').next().unwrap_or_default().to_string(),
        path: path.to_string(),
        kind: FileKind::File,
        size: path.len() as u64,
        mode: 0o644,
        mtime_ms: 0,
        symlink_target: None,
        owner: None,
        group: None,
    }
}

fn answer(request: Request, spec: &AgentSpec, started: Instant) -> Option<Outcome> {
    let ok = |r| Some(Outcome::Ok(r));
    match request {
        Request::Hello(_) => ok(Response::Hello(HelloResponse {
            protocol_version: spec.protocol_version,
            min_protocol_version: spec.min_protocol_version,
            agent_version: spec.agent_version.clone(),
        })),
        Request::Ping => ok(Response::Pong(PongResponse {
            agent_version: spec.agent_version.clone(),
            uptime_ms: started.elapsed().as_millis() as u64,
            sandbox_id: None,
        })),
        Request::Exec(e) if e.command == "hang" => None,
        Request::Exec(e) => ok(Response::Exec(ExecResponse {
            stdout: e.command,
            stderr: format!("timeout_ms={:?}", e.timeout_ms),
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            truncated: false,
            duration_ms: 1,
        })),
        Request::ReadFile(r) if r.path == "/missing" => Some(Outcome::Error(ErrorBody::new(
            ErrorCode::NotFound,
            "/missing: no such file",
        ))),
        Request::ReadFile(r) => ok(Response::FileContent(FileContent {
            content_b64: base64::engine::general_purpose::STANDARD.encode(&r.path),
            offset: r.offset,
            size: r.path.len() as u64,
            eof: true,
        })),
        Request::WriteFile(w) => ok(Response::Written(WrittenResponse {
            size: w.content.len() as u64,
            path: w.path,
            sha256: None,
        })),
        Request::ListFiles(l) => ok(Response::Listing(Listing {
            entries: vec![info(&format!("{}/a", l.path))],
            truncated: false,
        })),
        Request::Mkdir(m) => ok(Response::Stat(info(&m.path))),
        Request::Stat(p) if p.path == "/wrong-type" => ok(Response::Done),
        Request::Stat(p) => ok(Response::Stat(info(&p.path))),
        Request::DeleteFile(_)
        | Request::Rename(_)
        | Request::Init(_)
        | Request::Sync
        | Request::Shutdown => ok(Response::Done),
        // The fake has no process table: it answers like an agent that
        // does not know the action.
        other => Some(Outcome::Error(ErrorBody::new(
            ErrorCode::UnknownAction,
            format!("unknown action {:?}", other.action()),
        ))),
    }
}

/// A hybrid-vsock socket in front of an agent socket, like Firecracker's.
#[derive(Debug)]
pub struct Shim {
    pub path: PathBuf,
    /// While set, `CONNECT` gets no reply and the connection stays open
    /// (the guest's vsock driver is not up yet).
    pub silent: Arc<AtomicBool>,
    /// This many further connections are held silent, then answered.
    pub silent_remaining: Arc<AtomicU32>,
    /// Milliseconds to wait before answering a `CONNECT` (a busy guest).
    pub reply_delay_ms: Arc<AtomicU32>,
    /// `CONNECT` lines received.
    pub connects: Arc<AtomicU32>,
    /// Connections currently spliced to the agent.
    pub active: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl Shim {
    /// Serves `port` by splicing to the agent socket `agent`; other ports,
    /// or an agent socket nobody listens on, get the connection closed.
    pub fn start(path: &Path, port: u32, agent: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind shim");
        let silent = Arc::new(AtomicBool::new(false));
        let silent_remaining = Arc::new(AtomicU32::new(0));
        let reply_delay_ms = Arc::new(AtomicU32::new(0));
        let connects = Arc::new(AtomicU32::new(0));
        let active = Arc::new(AtomicU32::new(0));
        let knobs = Knobs {
            silent: silent.clone(),
            silent_remaining: silent_remaining.clone(),
            reply_delay_ms: reply_delay_ms.clone(),
            connects: connects.clone(),
            active: active.clone(),
        };
        let agent = agent.to_path_buf();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(shim_conn(stream, port, agent.clone(), knobs.clone()));
            }
        });
        Self {
            path: path.to_path_buf(),
            silent,
            silent_remaining,
            reply_delay_ms,
            connects,
            active,
            task,
        }
    }

    pub fn connects(&self) -> u32 {
        self.connects.load(Ordering::SeqCst)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The shim's shared switches and counters (see the [`Shim`] fields).
#[derive(Debug, Clone)]
struct Knobs {
    silent: Arc<AtomicBool>,
    silent_remaining: Arc<AtomicU32>,
    reply_delay_ms: Arc<AtomicU32>,
    connects: Arc<AtomicU32>,
    active: Arc<AtomicU32>,
}

async fn shim_conn(mut client: UnixStream, served: u32, agent: PathBuf, knobs: Knobs) {
    let Knobs {
        silent,
        silent_remaining,
        reply_delay_ms,
        connects,
        active,
    } = knobs;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match client.read(&mut b).await {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) if line.len() < 64 => line.push(b[0]),
            _ => return,
        }
    }
    connects.fetch_add(1, Ordering::SeqCst);
    let hold = silent.load(Ordering::SeqCst)
        || silent_remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if hold {
        // No reply, no close: wait for the client to give up.
        let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
        return;
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let port: Option<u32> = line.strip_prefix("CONNECT ").and_then(|p| p.parse().ok());
    if port != Some(served) {
        return;
    }
    let Ok(mut upstream) = UnixStream::connect(&agent).await else {
        return;
    };
    let delay = reply_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
    }
    if client.write_all(b"OK 1073741824\n").await.is_err() {
        return;
    }
    active.fetch_add(1, Ordering::SeqCst);
    {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        // Either side ending ends both, like a vsock reset.
        tokio::select! {
            _ = tokio::io::copy(&mut cr, &mut uw) => {}
            _ = tokio::io::copy(&mut ur, &mut cw) => {}
        }
    }
    drop(client);
    drop(upstream);
    active.fetch_sub(1, Ordering::SeqCst);
}

/// A temp dir with a fake agent and a shim on port 5000 in front of it.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub agent: Option<FakeAgent>,
    pub shim: Shim,
}

impl Rig {
    pub fn new(spec: AgentSpec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = FakeAgent::start(&dir.path().join("agent.sock"), spec);
        let shim = Shim::start(
            &dir.path().join("vsock.sock"),
            AGENT_VSOCK_PORT,
            &dir.path().join("agent.sock"),
        );
        Self {
            dir,
            agent: Some(agent),
            shim,
        }
    }

    pub fn agent_path(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn state(&self) -> Arc<AgentState> {
        self.agent.as_ref().expect("agent running").state.clone()
    }
}
