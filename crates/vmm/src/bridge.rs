//! Host side of the qemu agent channel: a Firecracker-style hybrid-vsock Unix
//! socket served over a yamux session on QEMU's virtio-serial chardev.
//!
//! ```text
//!  client ── vsock.sock ──► Bridge ── serial.sock (QEMU chardev) ──► guest agent
//!   "CONNECT 5000\n"          │  one yamux stream per client
//!   ◄── "OK 5000\n" ──────────┘  (stream starts with "CONNECT 5000\n",
//!                                 the guest answers "OK 5000\n")
//! ```
//!
//! # Sessions
//! On every connect to `serial.sock` the bridge writes the reset preamble
//! `0xff "RESET <nonce>\n"` (16 fresh lowercase hex characters), discards
//! everything until `ACK <nonce>\n`, then runs a yamux client over the same
//! byte stream. No ACK within [`BridgeConfig::ack_timeout`] means reconnect
//! and retry (for as long as the bridge lives). When the session dies (QEMU
//! exited, guest agent restarted its session) the bridge reconnects with a
//! new preamble; clients of the dead session are closed and must reconnect
//! (the agent client retries).
//!
//! A `CONNECT` that arrives while no session is up waits for one (up to
//! [`BridgeConfig::stream_timeout`]); like Firecracker before the guest's
//! vsock driver is up, it gets no answer until then.

use futures::future::poll_fn;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Longest `CONNECT`/`OK` line accepted.
const MAX_LINE: usize = 64;

/// Settings of one bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// QEMU's virtio-serial chardev socket (QEMU is the server).
    pub serial_path: PathBuf,
    /// The hybrid-vsock socket the bridge serves.
    pub vsock_path: PathBuf,
    /// How long to wait for `ACK <nonce>` before reconnecting (~1 s).
    pub ack_timeout: Duration,
    /// How long a client's `CONNECT` may wait for a session and a stream.
    pub stream_timeout: Duration,
    /// How long to wait for the guest's `OK` on a new stream before the
    /// session is considered stale and reset.
    pub ok_timeout: Duration,
    /// Label for logs (the sandbox id).
    pub label: String,
}

impl BridgeConfig {
    /// Defaults for the given socket paths.
    pub fn new(serial_path: PathBuf, vsock_path: PathBuf, label: impl Into<String>) -> Self {
        Self {
            serial_path,
            vsock_path,
            ack_timeout: Duration::from_secs(1),
            stream_timeout: Duration::from_secs(10),
            ok_timeout: Duration::from_secs(10),
            label: label.into(),
        }
    }
}

type StreamReply = oneshot::Sender<(yamux::Stream, u64)>;

/// A running bridge. Stopping (or dropping) it ends every task and removes
/// the vsock socket file.
#[derive(Debug)]
pub struct Bridge {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    vsock_path: PathBuf,
    sessions: watch::Receiver<u64>,
}

impl Bridge {
    /// Binds `vsock_path` (replacing a stale socket file) and starts the
    /// bridge tasks. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn start(cfg: BridgeConfig) -> io::Result<Self> {
        match std::fs::remove_file(&cfg.vsock_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&cfg.vsock_path)?;
        let cancel = CancellationToken::new();
        let (open_tx, open_rx) = mpsc::unbounded_channel();
        let (reset_tx, reset_rx) = mpsc::unbounded_channel();
        let (sessions_tx, sessions) = watch::channel(0);
        let session_task = tokio::spawn(session_loop(
            cfg.clone(),
            open_rx,
            reset_rx,
            sessions_tx,
            cancel.clone(),
        ));
        let accept_task = tokio::spawn(accept_loop(
            cfg.clone(),
            listener,
            open_tx,
            reset_tx,
            cancel.clone(),
        ));
        Ok(Self {
            cancel,
            tasks: vec![session_task, accept_task],
            vsock_path: cfg.vsock_path,
            sessions,
        })
    }

    /// Number of mux sessions established so far (1 after the first
    /// successful handshake, +1 per reconnect).
    pub fn sessions_established(&self) -> u64 {
        *self.sessions.borrow()
    }

    /// Waits until at least `n` sessions have been established, up to
    /// `timeout`. Returns whether that happened.
    pub async fn wait_sessions(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.sessions.clone();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops every task and removes the socket file.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.vsock_path);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.vsock_path);
    }
}

/// Writes the reset preamble and waits for the matching ACK. Reads one byte
/// at a time so no byte of the following mux session is consumed.
async fn handshake(stream: &mut UnixStream) -> io::Result<()> {
    let nonce = fresh_nonce();
    let mut preamble = vec![0xffu8];
    preamble.extend_from_slice(format!("RESET {nonce}\n").as_bytes());
    stream.write_all(&preamble).await?;
    let expected = format!("ACK {nonce}\n").into_bytes();
    let mut window: VecDeque<u8> = VecDeque::with_capacity(expected.len());
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if window.len() == expected.len() {
            window.pop_front();
        }
        window.push_back(byte[0]);
        if window.iter().eq(expected.iter()) {
            return Ok(());
        }
    }
}

/// 16 lowercase hex characters.
fn fresh_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn session_loop(
    cfg: BridgeConfig,
    mut open_rx: mpsc::UnboundedReceiver<StreamReply>,
    mut reset_rx: mpsc::UnboundedReceiver<u64>,
    sessions_tx: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    let mut generation = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let attempt = async {
            let mut s = UnixStream::connect(&cfg.serial_path).await?;
            tokio::time::timeout(cfg.ack_timeout, handshake(&mut s))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ACK"))??;
            Ok::<_, io::Error>(s)
        };
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            r = attempt => r,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                debug!(sandbox_id = %cfg.label, error = %e, "agent channel handshake failed, retrying");
                if e.kind() != io::ErrorKind::TimedOut {
                    // Socket missing or refused: back off. (A timeout already waited.)
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        generation += 1;
        sessions_tx.send_modify(|n| *n += 1);
        info!(sandbox_id = %cfg.label, generation, "agent channel session established");
        // Resets aimed at earlier sessions are stale.
        while reset_rx.try_recv().is_ok() {}
        let end = run_session(stream, generation, &mut open_rx, &mut reset_rx, &cancel).await;
        info!(sandbox_id = %cfg.label, generation, reason = %end, "agent channel session ended");
    }
}

/// Drives one yamux client session until it dies, a reset for this
/// generation arrives, or the bridge is cancelled. Returns why it ended.
async fn run_session(
    stream: UnixStream,
    generation: u64,
    open_rx: &mut mpsc::UnboundedReceiver<StreamReply>,
    reset_rx: &mut mpsc::UnboundedReceiver<u64>,
    cancel: &CancellationToken,
) -> String {
    let mut config = yamux::Config::default();
    config.set_split_send_size(locale2b_protocol::MUX_SPLIT_SEND_SIZE);
    let mut conn = yamux::Connection::new(stream.compat(), config, yamux::Mode::Client);
    let mut pending: VecDeque<StreamReply> = VecDeque::new();
    loop {
        let drive = poll_fn(|cx| loop {
            if !pending.is_empty() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(s)) => {
                        if let Some(reply) = pending.pop_front() {
                            // A client that gave up drops the stream here.
                            let _ = reply.send((s, generation));
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(format!("open stream: {e}")),
                    Poll::Pending => {}
                }
            }
            match conn.poll_next_inbound(cx) {
                // The guest does not open streams; refuse by dropping.
                Poll::Ready(Some(Ok(s))) => drop(s),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(format!("mux error: {e}")),
                Poll::Ready(None) => return Poll::Ready("closed by peer".to_owned()),
                Poll::Pending => return Poll::Pending,
            }
        });
        tokio::select! {
            () = cancel.cancelled() => return "bridge stopped".into(),
            reason = drive => return reason,
            req = open_rx.recv() => match req {
                Some(r) => pending.push_back(r),
                None => return "bridge stopped".into(),
            },
            gen = reset_rx.recv() => match gen {
                Some(g) if g == generation => return "stale session reset".into(),
                Some(_) => {}
                None => return "bridge stopped".into(),
            },
        }
    }
}

async fn accept_loop(
    cfg: BridgeConfig,
    listener: UnixListener,
    open_tx: mpsc::UnboundedSender<StreamReply>,
    reset_tx: mpsc::UnboundedSender<u64>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, _)) => {
                let cfg = cfg.clone();
                let open_tx = open_tx.clone();
                let reset_tx = reset_tx.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        r = serve_client(&cfg, client, open_tx, reset_tx) => {
                            if let Err(e) = r {
                                debug!(sandbox_id = %cfg.label, error = %e, "vsock client closed");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                warn!(sandbox_id = %cfg.label, error = %e, "accept on vsock socket failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, one byte at
/// a time (nothing after the newline is consumed). Returns it without `\n`.
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return String::from_utf8(line)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"));
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

fn parse_connect(line: &str) -> Option<u32> {
    line.strip_prefix("CONNECT ")?.trim().parse().ok()
}

async fn serve_client(
    cfg: &BridgeConfig,
    mut client: UnixStream,
    open_tx: mpsc::UnboundedSender<StreamReply>,
    reset_tx: mpsc::UnboundedSender<u64>,
) -> io::Result<()> {
    let line = tokio::time::timeout(cfg.stream_timeout, read_line(&mut client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNECT line"))??;
    let port = parse_connect(&line).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad request {line:?}"))
    })?;
    let (tx, rx) = oneshot::channel();
    open_tx
        .send(tx)
        .map_err(|_| io::Error::other("bridge stopped"))?;
    let (stream, generation) = tokio::time::timeout(cfg.stream_timeout, rx)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no agent session"))?
        .map_err(|_| io::Error::other("agent session ended"))?;
    let mut stream = stream.compat();
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    stream.flush().await?;
    let ok = match tokio::time::timeout(cfg.ok_timeout, read_line(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => {
            warn!(sandbox_id = %cfg.label, port, "guest did not answer CONNECT; resetting the session");
            let _ = reset_tx.send(generation);
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no OK from guest"));
        }
    };
    if !ok.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("guest answered {ok:?}"),
        ));
    }
    client.write_all(format!("{ok}\n").as_bytes()).await?;
    tokio::io::copy_bidirectional(&mut client, &mut stream).await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Guest side of the channel for tests: hunts for the preamble, answers
    /// ACK, serves yamux streams (port 5000 echoes; others are closed).
    /// `ignore_first` preambles are not answered (to exercise the timeout).
    pub(crate) struct FakeGuest {
        pub(crate) connections: Arc<AtomicUsize>,
        kill: Arc<tokio::sync::Notify>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeGuest {
        pub(crate) fn start(serial_path: &Path, ignore_first: usize) -> Self {
            let listener = UnixListener::bind(serial_path).expect("bind serial");
            let connections = Arc::new(AtomicUsize::new(0));
            let kill = Arc::new(tokio::sync::Notify::new());
            let (c, k) = (connections.clone(), kill.clone());
            let task = tokio::spawn(async move {
                loop {
                    let (mut s, _) = listener.accept().await.expect("accept");
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let Ok(nonce) = hunt_preamble(&mut s).await else {
                        continue;
                    };
                    if n < ignore_first {
                        // Hold the connection without answering until the host gives up.
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                        continue;
                    }
                    s.write_all(b"garbage\nACK 0000000000000000\n")
                        .await
                        .expect("write");
                    s.write_all(format!("ACK {nonce}\n").as_bytes())
                        .await
                        .expect("ack");
                    let mut conn = yamux::Connection::new(
                        s.compat(),
                        yamux::Config::default(),
                        yamux::Mode::Server,
                    );
                    let serve = poll_fn(|cx| loop {
                        match conn.poll_next_inbound(cx) {
                            Poll::Ready(Some(Ok(st))) => {
                                tokio::spawn(serve_guest_stream(st));
                            }
                            Poll::Ready(_) => return Poll::Ready(()),
                            Poll::Pending => return Poll::Pending,
                        }
                    });
                    tokio::select! {
                        () = serve => {}
                        () = k.notified() => {}
                    }
                }
            });
            Self {
                connections,
                kill,
                task,
            }
        }

        /// Drops the current session (like a QEMU restart or guest reset).
        pub(crate) fn drop_session(&self) {
            self.kill.notify_one();
        }
    }

    impl Drop for FakeGuest {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn hunt_preamble(s: &mut UnixStream) -> io::Result<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if s.read(&mut byte).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.push(byte[0]);
            if byte[0] == b'\n' {
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(pos) = text.rfind("RESET ") {
                    let nonce = text[pos + 6..].trim_end().to_owned();
                    if nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Ok(nonce);
                    }
                }
                buf.clear();
            }
        }
    }

    async fn serve_guest_stream(st: yamux::Stream) {
        let mut st = st.compat();
        let Ok(line) = read_line(&mut st).await else {
            return;
        };
        if parse_connect(&line) != Some(5000) {
            return;
        }
        if st.write_all(b"OK 5000\n").await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match st.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if st.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn echo_roundtrip(vsock: &Path, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = UnixStream::connect(vsock).await?;
        c.write_all(b"CONNECT 5000\n").await?;
        let ok = read_line(&mut c).await?;
        assert_eq!(ok, "OK 5000");
        c.write_all(payload).await?;
        let mut got = vec![0u8; payload.len()];
        c.read_exact(&mut got).await?;
        Ok(got)
    }

    fn test_config(dir: &Path) -> BridgeConfig {
        let mut cfg = BridgeConfig::new(dir.join("serial.sock"), dir.join("vsock.sock"), "test");
        cfg.ack_timeout = Duration::from_millis(300);
        cfg.stream_timeout = Duration::from_secs(5);
        cfg
    }

    #[test]
    fn nonce_is_16_lowercase_hex() {
        let a = fresh_nonce();
        assert_eq!(a.len(), 16);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(a, fresh_nonce());
        assert_eq!(parse_connect("CONNECT 5000"), Some(5000));
        assert_eq!(parse_connect("CONNECT x"), None);
    }

    #[tokio::test]
    async fn relays_streams_and_reconnects_after_session_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = test_config(dir.path());
        // The bridge starts before the guest exists: it must keep retrying.
        let bridge = Bridge::start(cfg.clone()).expect("bridge");
        let guest = FakeGuest::start(&cfg.serial_path, 1);
        assert!(bridge.wait_sessions(1, Duration::from_secs(5)).await);
        assert!(
            guest.connections.load(Ordering::SeqCst) >= 2,
            "first preamble was ignored"
        );

        let got = echo_roundtrip(&cfg.vsock_path, b"hello frames")
            .await
            .expect("echo");
        assert_eq!(got, b"hello frames");
        // Several concurrent streams.
        let (a, b) = tokio::join!(
            echo_roundtrip(&cfg.vsock_path, &[1u8; 100_000]),
            echo_roundtrip(&cfg.vsock_path, b"second")
        );
        assert_eq!(a.expect("a"), vec![1u8; 100_000]);
        assert_eq!(b.expect("b"), b"second");

        // Unknown port: the guest closes the stream, so does the bridge.
        let mut c = UnixStream::connect(&cfg.vsock_path).await.expect("connect");
        c.write_all(b"CONNECT 7\n").await.expect("write");
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("closed in time")
            .expect("read");
        assert_eq!(n, 0);

        // Mid-session loss: an open client is closed, the bridge reconnects.
        let mut open = UnixStream::connect(&cfg.vsock_path).await.expect("connect");
        open.write_all(b"CONNECT 5000\n").await.expect("write");
        assert_eq!(read_line(&mut open).await.expect("ok"), "OK 5000");
        guest.drop_session();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
            .await
            .expect("old client closed in time");
        assert!(closed.is_err() || rest.is_empty());
        assert!(bridge.wait_sessions(2, Duration::from_secs(5)).await);
        let got = echo_roundtrip(&cfg.vsock_path, b"after reconnect")
            .await
            .expect("echo");
        assert_eq!(got, b"after reconnect");

        bridge.stop().await;
        assert!(!cfg.vsock_path.exists(), "vsock socket removed");
    }

    #[tokio::test]
    async fn connect_waits_for_a_late_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = test_config(dir.path());
        let bridge = Bridge::start(cfg.clone()).expect("bridge");
        let vsock = cfg.vsock_path.clone();
        let client = tokio::spawn(async move { echo_roundtrip(&vsock, b"late").await });
        // The client's CONNECT is queued while no guest exists yet.
        assert_eq!(bridge.sessions_established(), 0);
        let _guest = FakeGuest::start(&cfg.serial_path, 0);
        let got = client.await.expect("join").expect("echo");
        assert_eq!(got, b"late");
        drop(bridge);
        assert!(!cfg.vsock_path.exists());
    }
}
