//! The virtio-serial session logic, driven over an in-memory pipe with a
//! test host: reset preamble, yamux client, `CONNECT`, ping, and a second
//! `RESET` in the middle of a session.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use futures::future::poll_fn;
use locale2b_agent::serial::{run_session_pump, OnHangup};
use locale2b_agent::{AgentContext, Config};
use locale2b_protocol::frame::{read_frame, write_json};
use locale2b_protocol::*;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

const WAIT: Duration = Duration::from_secs(30);

/// The host's end of the "serial port", shareable so the test can write raw
/// bytes after dropping a yamux client that used it.
#[derive(Clone)]
struct HostEnd(Arc<Mutex<DuplexStream>>);

impl AsyncRead for HostEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.0.lock().unwrap();
        Pin::new(&mut *g).poll_read(cx, buf)
    }
}

impl AsyncWrite for HostEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.0.lock().unwrap();
        Pin::new(&mut *g).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.0.lock().unwrap();
        Pin::new(&mut *g).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut g = self.0.lock().unwrap();
        Pin::new(&mut *g).poll_shutdown(cx)
    }
}

/// Writes the preamble and discards everything up to `ACK <nonce>\n`.
/// `noise` is written first (only sensible when no session is active:
/// inside a session the preamble must start at a yamux header boundary).
async fn handshake(host: &mut HostEnd, nonce: &str, noise: &[u8]) {
    host.write_all(noise).await.unwrap();
    let mut pre = vec![0xffu8];
    pre.extend_from_slice(format!("RESET {nonce}\n").as_bytes());
    host.write_all(&pre).await.unwrap();
    let want = format!("ACK {nonce}\n");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        while !seen.ends_with(want.as_bytes()) {
            assert_eq!(
                host.read(&mut byte).await.unwrap(),
                1,
                "pipe closed before ACK"
            );
            seen.push(byte[0]);
        }
    })
    .await
    .expect("no ACK from the guest");
}

type OpenReq = oneshot::Sender<yamux::Stream>;

/// Runs a yamux client on `host`; returns a handle that opens streams.
fn start_client(host: HostEnd) -> (mpsc::Sender<OpenReq>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<OpenReq>(4);
    let task = tokio::spawn(async move {
        let mut conn =
            yamux::Connection::new(host.compat(), yamux::Config::default(), yamux::Mode::Client);
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(reply) = req else { return };
                    let stream = poll_fn(|cx| conn.poll_new_outbound(cx)).await.expect("open stream");
                    let _ = reply.send(stream);
                }
                inbound = poll_fn(|cx| conn.poll_next_inbound(cx)) => {
                    match inbound {
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                }
            }
        }
    });
    (tx, task)
}

async fn open(tx: &mpsc::Sender<OpenReq>) -> tokio_util::compat::Compat<yamux::Stream> {
    let (rtx, rrx) = oneshot::channel();
    tx.send(rtx).await.unwrap();
    tokio::time::timeout(WAIT, rrx)
        .await
        .unwrap()
        .unwrap()
        .compat()
}

async fn connect_and_ping(tx: &mpsc::Sender<OpenReq>, id: u64) -> PongResponse {
    let mut s = open(tx).await;
    s.write_all(b"CONNECT 5000\n").await.unwrap();
    s.flush().await.unwrap();
    let mut line = [0u8; 8];
    tokio::time::timeout(WAIT, s.read_exact(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&line, b"OK 5000\n");
    write_json(
        &mut s,
        &RequestFrame {
            id,
            request: Request::Ping,
        },
        DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let payload = tokio::time::timeout(WAIT, read_frame(&mut s, DEFAULT_MAX_FRAME))
        .await
        .unwrap()
        .unwrap()
        .expect("answer");
    let frame = frame::parse_response(&payload).unwrap();
    assert_eq!(frame.id, id);
    match frame.outcome {
        Outcome::Ok(Response::Pong(p)) => p,
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test]
async fn host_session_connect_ping_and_reset_mid_session() {
    let ctx = AgentContext::new(Config::default());
    let (guest_end, host_end) = tokio::io::duplex(1024 * 1024);
    let pump = tokio::spawn(run_session_pump(guest_end, ctx.clone(), OnHangup::Stop));
    let mut host = HostEnd(Arc::new(Mutex::new(host_end)));

    // Session 1.
    handshake(&mut host, "0123456789abcdef", b"\0junk\n\xffRESET 12\n").await;
    let (tx, client) = start_client(host.clone());
    let pong = connect_and_ping(&tx, 1).await;
    assert_eq!(pong.agent_version, AGENT_VERSION);
    // Two streams at once on one session.
    let (a, b) = tokio::join!(connect_and_ping(&tx, 2), connect_and_ping(&tx, 3));
    assert_eq!(a.agent_version, b.agent_version);
    // A stream for a port nobody serves is closed by the guest.
    let mut other = open(&tx).await;
    other.write_all(b"CONNECT 1234\n").await.unwrap();
    other.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, other.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "unknown port answered {:?}", &buf[..n]);

    // The host "reconnects": its old mux client is gone and a new preamble
    // arrives where the guest expects a yamux header.
    client.abort();
    let _ = client.await;
    drop(tx);
    handshake(&mut host, "fedcba9876543210", b"").await;
    let (tx2, client2) = start_client(host.clone());
    let pong = connect_and_ping(&tx2, 10).await;
    assert_eq!(pong.agent_version, AGENT_VERSION);

    // Hang-up: the pump (OnHangup::Stop) returns.
    client2.abort();
    let _ = client2.await;
    drop(tx2);
    drop(host);
    let res = tokio::time::timeout(WAIT, pump)
        .await
        .expect("pump did not stop");
    assert!(matches!(res, Ok(Ok(()))), "{res:?}");
}

#[tokio::test]
async fn preamble_after_a_garbage_header_starts_a_new_session() {
    let ctx = AgentContext::new(Config::default());
    let (guest_end, host_end) = tokio::io::duplex(1024 * 1024);
    let pump = tokio::spawn(run_session_pump(
        guest_end,
        ctx.clone(),
        OnHangup::WaitAndRetry(Duration::from_millis(5)),
    ));
    let mut host = HostEnd(Arc::new(Mutex::new(host_end)));
    handshake(&mut host, "00000000000000aa", b"").await;
    let (tx, client) = start_client(host.clone());
    connect_and_ping(&tx, 1).await;
    // A stale 12-byte non-data header (no body) followed by the preamble:
    // the marker lands on a header boundary and starts a new session.
    client.abort();
    let _ = client.await;
    host.write_all(&[7u8; 12]).await.unwrap();
    handshake(&mut host, "00000000000000bb", b"").await;
    let (tx2, client2) = start_client(host.clone());
    connect_and_ping(&tx2, 2).await;
    client2.abort();
    ctx.request_shutdown();
    let res = tokio::time::timeout(WAIT, pump)
        .await
        .expect("pump did not stop on shutdown");
    assert!(matches!(res, Ok(Ok(()))), "{res:?}");
}

/// Models a virtio-serial port: while no host is attached, reads return 0
/// (hang-up) and writes fail; a host can attach again later.
#[derive(Clone, Default)]
struct FlakyPort(
    Arc<Mutex<Option<DuplexStream>>>,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl FlakyPort {
    /// Attaches a new host and returns its end.
    fn attach(&self) -> HostEnd {
        let (guest, host) = tokio::io::duplex(1024 * 1024);
        *self.0.lock().unwrap() = Some(guest);
        HostEnd(Arc::new(Mutex::new(host)))
    }

    fn detach(&self) {
        *self.0.lock().unwrap() = None;
    }
}

impl AsyncRead for FlakyPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.0.lock().unwrap();
        match g.as_mut() {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => {
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for FlakyPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.0.lock().unwrap();
        match g.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn new_host_after_hangup_gets_a_fresh_session() {
    let ctx = AgentContext::new(Config::default());
    let port = FlakyPort::default();
    let mut host = port.attach();
    let pump = tokio::spawn(run_session_pump(
        port.clone(),
        ctx.clone(),
        OnHangup::WaitAndRetry(Duration::from_millis(5)),
    ));
    handshake(&mut host, "1111111111111111", b"").await;
    let (tx, client) = start_client(host.clone());
    connect_and_ping(&tx, 1).await;

    // The host goes away (the guest sees read() == 0 for a while) ...
    client.abort();
    let _ = client.await;
    drop(tx);
    drop(host);
    port.detach();
    let deadline = std::time::Instant::now() + WAIT;
    while port.1.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "guest never saw the hang-up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... and a new host connects (e.g. after a snapshot restore).
    let mut host = port.attach();
    handshake(&mut host, "2222222222222222", b"").await;
    let (tx, client) = start_client(host.clone());
    let pong = connect_and_ping(&tx, 2).await;
    assert_eq!(pong.agent_version, AGENT_VERSION);
    client.abort();
    ctx.request_shutdown();
    let res = tokio::time::timeout(WAIT, pump)
        .await
        .expect("pump did not stop on shutdown");
    assert!(matches!(res, Ok(Ok(()))), "{res:?}");
}
