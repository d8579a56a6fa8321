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

/// Everything a streamed request answered.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Non-final events, in order.
    pub events: Vec<locale2b_protocol::StreamEvent>,
    /// Bytes per channel name.
    pub data: std::collections::BTreeMap<&'static str, Vec<u8>>,
    /// Data frames in order.
    pub order: Vec<(&'static str, Vec<u8>)>,
    /// The final frame.
    pub end: Option<Result<Response, ErrorBody>>,
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

    /// Sends a data frame.
    pub async fn send_data(&mut self, channel: locale2b_protocol::DataChannel, bytes: &[u8]) {
        locale2b_protocol::frame::write_data(&mut self.stream, channel, bytes, usize::MAX)
            .await
            .expect("write data frame");
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
            Outcome::Event(e) => panic!("unexpected stream event {e:?} for a unary request"),
        }
    }

    /// Says `hello` with `version`.
    pub async fn hello(&mut self, version: u32) {
        let r = self
            .call(Request::Hello(locale2b_protocol::HelloRequest {
                protocol_version: version,
                client: "test".into(),
            }))
            .await
            .expect("hello");
        assert!(matches!(r, Response::Hello(h) if h.protocol_version >= version));
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub async fn send(&mut self, request: Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let payload = serde_json::to_vec(&RequestFrame { id, request }).expect("encode");
        self.send_raw(&payload).await;
        id
    }

    /// Says `hello` with protocol 2 (streams and the process table).
    pub async fn hello_v2(&mut self) {
        let r = self
            .call(Request::Hello(locale2b_protocol::HelloRequest {
                protocol_version: 2,
                client: "test".into(),
            }))
            .await
            .expect("hello");
        assert!(matches!(r, Response::Hello(h) if h.protocol_version >= 2));
    }

    /// Sends a streamed request and collects everything up to the final
    /// frame: events, data (by channel) and the outcome.
    pub async fn stream(&mut self, request: Request) -> Streamed {
        let id = self.next_id;
        self.next_id += 1;
        let payload = serde_json::to_vec(&RequestFrame { id, request }).expect("encode");
        self.send_raw(&payload).await;
        let mut out = Streamed::default();
        loop {
            let frame = tokio::time::timeout(
                WAIT,
                locale2b_protocol::frame::read_any(&mut self.stream, 64 * 1024 * 1024),
            )
            .await
            .expect("stream frame timed out")
            .expect("read frame")
            .expect("connection closed in the middle of a stream");
            match frame {
                locale2b_protocol::Frame::Data { channel, bytes } => {
                    out.data
                        .entry(channel.as_str())
                        .or_default()
                        .extend(bytes.iter());
                    out.order.push((channel.as_str(), bytes));
                }
                locale2b_protocol::Frame::Json(p) => {
                    let f: ResponseFrame = serde_json::from_slice(&p).expect("response frame");
                    assert_eq!(f.id, id, "frame for another request");
                    match f.outcome {
                        Outcome::Event(e) => out.events.push(e),
                        Outcome::Ok(r) => {
                            out.end = Some(Ok(r));
                            return out;
                        }
                        Outcome::Error(e) => {
                            out.end = Some(Err(e));
                            return out;
                        }
                    }
                }
            }
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
