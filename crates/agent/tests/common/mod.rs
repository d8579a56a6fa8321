//! Shared test helpers: an in-process agent on a Unix socket and a tiny
//! framed client (deliberately independent of `locale2b-agent-client`).
#![allow(dead_code)]

use locale2b_agent::{serve_unix, AgentContext, Config};
use locale2b_protocol::frame::{read_frame, write_frame};
use locale2b_protocol::{ErrorBody, Outcome, Request, RequestFrame, Response, ResponseFrame};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// Every single wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

/// An agent serving on a Unix socket inside the test process.
pub struct TestAgent {
    pub ctx: Arc<AgentContext>,
    pub socket: PathBuf,
    pub workspace: PathBuf,
    pub dir: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<Result<(), locale2b_agent::AgentError>>,
}

impl TestAgent {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).expect("mkdir workspace");
        let mut config = Config {
            workspace_dir: workspace.clone(),
            ..Config::default()
        };
        adjust(&mut config);
        let ctx = AgentContext::new(config);
        let socket = dir.path().join("agent.sock");
        let (s, c) = (socket.clone(), ctx.clone());
        let task = tokio::spawn(async move { serve_unix(&s, c).await });
        wait_for_socket(&socket).await;
        Self {
            ctx,
            socket,
            workspace,
            dir,
            task,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }
}

/// Polls until a Unix socket accepts connections.
pub async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        if UnixStream::connect(path).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent socket {} never came up",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A framed client.
pub struct Client {
    pub stream: UnixStream,
    next_id: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Self {
        let stream = tokio::time::timeout(WAIT, UnixStream::connect(path))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self { stream, next_id: 1 }
    }

    /// Sends a raw payload as one frame.
    pub async fn send_raw(&mut self, payload: &[u8]) {
        write_frame(&mut self.stream, payload, usize::MAX)
            .await
            .expect("write frame");
    }

    /// Reads one response frame.
    pub async fn recv(&mut self) -> ResponseFrame {
        let payload = tokio::time::timeout(WAIT, read_frame(&mut self.stream, 64 * 1024 * 1024))
            .await
            .expect("response timed out")
            .expect("read frame")
            .expect("connection closed before the answer");
        serde_json::from_slice(&payload).expect("response frame")
    }

    /// Sends a request and returns its outcome (checking the id).
    pub async fn call(&mut self, request: Request) -> Result<Response, ErrorBody> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = serde_json::to_vec(&RequestFrame { id, request }).expect("encode");
        self.send_raw(&payload).await;
        let frame = self.recv().await;
        assert_eq!(frame.id, id, "answer to another request");
        match frame.outcome {
            Outcome::Ok(r) => Ok(r),
            Outcome::Error(e) => Err(e),
        }
    }

    /// True when the agent closed the connection (EOF) within [`WAIT`].
    pub async fn closed_by_agent(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
