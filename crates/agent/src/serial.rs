//! The agent channel of the QEMU backend: a virtio-serial port carrying
//! yamux, with an in-band reset handshake.
//!
//! The host writes `\xff` `RESET <nonce>\n` (nonce: 16 lowercase hex
//! digits) on every connect; the guest answers `ACK <nonce>\n` and runs a
//! fresh yamux **server** on the bytes that follow. The guest drops the
//! session and hunts for a new preamble when the port hangs up (`read()`
//! returns 0), when a `0xff` byte appears where a yamux header is expected,
//! or when the yamux connection fails. Every yamux stream starts with the
//! host's `CONNECT <port>\n`; the guest answers `OK <port>\n` for port
//! [`AGENT_VSOCK_PORT`] and then serves the framed protocol on the stream,
//! or for [`FORWARD_VSOCK_PORT`] and then forwards it to a guest TCP port
//! (see [`crate::forward`]), and closes streams for other ports.
//!
//! [`run_session_pump`] holds the logic and works on any byte stream, so it
//! is unit-tested over an in-memory pipe; [`SerialPort`] is the real device.

use crate::context::AgentContext;
use crate::AgentError;
use futures::future::poll_fn;
use locale2b_protocol::{AGENT_VSOCK_PORT, FORWARD_VSOCK_PORT, SERIAL_PORT_NAME};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::task::JoinHandle;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// Size of a yamux frame header.
const YAMUX_HEADER_LEN: usize = 12;
/// Length of the nonce in `RESET <nonce>`.
const NONCE_LEN: usize = 16;
/// Longest line the preamble hunter remembers.
const HUNT_WINDOW: usize = 64;
/// Buffer of the in-memory pipe between the pump and the yamux server.
const MUX_PIPE_BUF: usize = 256 * 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Time a new stream has to send its `CONNECT` line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pump does when the port reports hang-up (`read()` returns 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHangup {
    /// The stream is finished (a socket or pipe in tests): return.
    Stop,
    /// The port stays open for the next host (virtio-serial): drop the
    /// session and pending output, wait this long, then read again.
    WaitAndRetry(Duration),
}

/// Finds `RESET <nonce>\n` anywhere in a byte stream.
#[derive(Debug, Default)]
struct PreambleHunter {
    line: Vec<u8>,
}

impl PreambleHunter {
    /// Feeds bytes; returns the nonce and the number of bytes consumed
    /// (through the newline) when a preamble completes.
    fn feed(&mut self, data: &[u8]) -> Option<(String, usize)> {
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                let found = parse_reset(&self.line);
                self.line.clear();
                if let Some(nonce) = found {
                    return Some((nonce, i + 1));
                }
            } else {
                if self.line.len() == HUNT_WINDOW {
                    self.line.remove(0);
                }
                self.line.push(b);
            }
        }
        None
    }

    fn reset(&mut self) {
        self.line.clear();
    }
}

/// Accepts a line ending in `RESET <16 lowercase hex>` (anything before it,
/// such as the `0xff` marker or stale bytes, is ignored).
fn parse_reset(line: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"RESET ";
    let need = TAG.len() + NONCE_LEN;
    if line.len() < need {
        return None;
    }
    let tail = &line[line.len() - need..];
    let nonce = tail.strip_prefix(TAG)?;
    nonce
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        .then(|| String::from_utf8_lossy(nonce).into_owned())
}

/// Follows yamux frame boundaries in the host-to-guest byte stream so a
/// `0xff` byte where a header should start is recognised as a new preamble.
#[derive(Debug, Default)]
struct MuxTracker {
    header: [u8; YAMUX_HEADER_LEN],
    header_len: usize,
    body_left: u32,
}

impl MuxTracker {
    /// Returns the offset of a preamble marker in `data`, if any.
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            if self.body_left > 0 {
                let take = (self.body_left as usize).min(data.len() - i);
                i += take;
                self.body_left -= take as u32;
                continue;
            }
            if self.header_len == 0 && data[i] == 0xff {
                return Some(i);
            }
            self.header[self.header_len] = data[i];
            self.header_len += 1;
            i += 1;
            if self.header_len == YAMUX_HEADER_LEN {
                self.header_len = 0;
                // Type 0 is a data frame: its length field counts body bytes.
                if self.header[1] == 0 {
                    let h = &self.header;
                    self.body_left = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                }
            }
        }
        None
    }
}

/// One live yamux session: the pump's end of the pipe and the server task.
struct Session {
    reader: ReadHalf<DuplexStream>,
    writer: WriteHalf<DuplexStream>,
    tracker: MuxTracker,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Event {
    PortRead(io::Result<usize>),
    PortWrote(io::Result<usize>),
    MuxRead(io::Result<usize>),
    MuxWrote(io::Result<usize>),
}

async fn read_opt(s: Option<&mut ReadHalf<DuplexStream>>, buf: &mut [u8]) -> io::Result<usize> {
    match s {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_opt(s: Option<&mut WriteHalf<DuplexStream>>, buf: &[u8]) -> io::Result<usize> {
    match s {
        Some(s) => s.write(buf).await,
        None => std::future::pending().await,
    }
}

/// Runs the guest side of the serial channel on `port` until the agent
/// shuts down (or, with [`OnHangup::Stop`], until the port ends).
///
/// # Errors
/// Only a read error on the port with [`OnHangup::Stop`].
pub async fn run_session_pump<P>(
    port: P,
    ctx: Arc<AgentContext>,
    on_hangup: OnHangup,
) -> io::Result<()>
where
    P: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut port_r, mut port_w) = tokio::io::split(port);
    let mut hunter = PreambleHunter::default();
    let mut session: Option<Session> = None;
    // Host bytes waiting to go into the yamux server.
    let mut to_mux: Vec<u8> = Vec::new();
    // Guest bytes waiting to go out of the port.
    let mut to_port: Vec<u8> = Vec::new();
    let mut to_port_off = 0usize;
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut obuf = vec![0u8; 256 * 1024];
    let shutdown = ctx.shutdown_token().clone();
    loop {
        let event = {
            let (mux_r, mux_w) = match session.as_mut() {
                Some(s) => (Some(&mut s.reader), Some(&mut s.writer)),
                None => (None, None),
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = port_r.read(&mut rbuf), if to_mux.is_empty() => Event::PortRead(r),
                r = write_opt(mux_w, &to_mux), if !to_mux.is_empty() => Event::MuxWrote(r),
                r = read_opt(mux_r, &mut obuf), if to_port.is_empty() => Event::MuxRead(r),
                r = port_w.write(&to_port[to_port_off..]), if !to_port.is_empty() => Event::PortWrote(r),
            }
        };
        match event {
            Event::PortRead(Ok(0)) | Event::PortRead(Err(_)) => {
                let err = matches!(event, Event::PortRead(Err(_)));
                if session.take().is_some() {
                    tracing::info!("serial host hung up, session dropped");
                }
                to_mux.clear();
                to_port.clear();
                to_port_off = 0;
                hunter.reset();
                match on_hangup {
                    OnHangup::Stop => {
                        if let Event::PortRead(Err(e)) = event {
                            return Err(e);
                        }
                        return Ok(());
                    }
                    OnHangup::WaitAndRetry(d) => {
                        if err {
                            tracing::debug!("serial read failed, retrying");
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(d) => {}
                        }
                    }
                }
            }
            Event::PortRead(Ok(n)) => {
                let mut data = &rbuf[..n];
                while !data.is_empty() {
                    if let Some(s) = session.as_mut() {
                        match s.tracker.scan(data) {
                            None => {
                                to_mux.extend_from_slice(data);
                                data = &[];
                            }
                            Some(at) => {
                                to_mux.extend_from_slice(&data[..at]);
                                tracing::info!("serial host restarted the session");
                                session = None;
                                to_mux.clear();
                                hunter.reset();
                                data = &data[at..];
                            }
                        }
                    } else {
                        match hunter.feed(data) {
                            None => data = &[],
                            Some((nonce, used)) => {
                                data = &data[used..];
                                to_port.clear();
                                to_port_off = 0;
                                to_port.extend_from_slice(format!("ACK {nonce}\n").as_bytes());
                                session = Some(start_session(ctx.clone()));
                                tracing::info!(nonce, "serial session started");
                            }
                        }
                    }
                }
            }
            Event::PortWrote(Ok(n)) => {
                to_port_off += n;
                if to_port_off >= to_port.len() {
                    to_port.clear();
                    to_port_off = 0;
                }
            }
            Event::PortWrote(Err(e)) => {
                tracing::debug!(error = %e, "serial write failed, output dropped");
                to_port.clear();
                to_port_off = 0;
            }
            Event::MuxRead(Ok(0)) | Event::MuxRead(Err(_)) | Event::MuxWrote(Err(_)) => {
                tracing::info!("serial mux session ended, waiting for a new host");
                session = None;
                to_mux.clear();
                hunter.reset();
            }
            Event::MuxRead(Ok(n)) => {
                to_port.extend_from_slice(&obuf[..n]);
            }
            Event::MuxWrote(Ok(n)) => {
                to_mux.drain(..n);
            }
        }
    }
}

fn start_session(ctx: Arc<AgentContext>) -> Session {
    let (pump_end, mux_end) = tokio::io::duplex(MUX_PIPE_BUF);
    let task = tokio::spawn(run_mux_server(mux_end, ctx));
    let (reader, writer) = tokio::io::split(pump_end);
    Session {
        reader,
        writer,
        tracker: MuxTracker::default(),
        task,
    }
}

/// Runs a yamux server on `io` and serves every inbound stream.
async fn run_mux_server(io: DuplexStream, ctx: Arc<AgentContext>) {
    let mut config = yamux::Config::default();
    config.set_split_send_size(locale2b_protocol::MUX_SPLIT_SEND_SIZE);
    let mut conn = yamux::Connection::new(io.compat(), config, yamux::Mode::Server);
    let mut streams = tokio::task::JoinSet::new();
    loop {
        match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => {
                streams.spawn(serve_mux_stream(stream, ctx.clone()));
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "yamux session failed");
                break;
            }
            None => break,
        }
    }
    // Dropping the set aborts the stream tasks of this session.
    drop(streams);
}

/// Handles one yamux stream: `CONNECT <port>\n` → `OK <port>\n` → protocol.
async fn serve_mux_stream(stream: yamux::Stream, ctx: Arc<AgentContext>) {
    let mut stream = stream.compat();
    let line = match tokio::time::timeout(CONNECT_TIMEOUT, read_line(&mut stream)).await {
        Ok(Ok(Some(line))) => line,
        _ => return,
    };
    let port = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok());
    match port {
        Some(p) if p == AGENT_VSOCK_PORT => {
            if stream
                .write_all(format!("OK {p}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            if stream.flush().await.is_err() {
                return;
            }
            crate::conn::serve_connection(stream, ctx).await;
        }
        Some(p) if p == FORWARD_VSOCK_PORT => {
            if stream
                .write_all(format!("OK {p}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            crate::forward::serve_forward(stream).await;
        }
        other => {
            tracing::debug!(?other, "stream for an unknown port closed");
            let _ = stream.shutdown().await;
        }
    }
}

/// Reads one `\n`-terminated ASCII line of at most [`MAX_CONNECT_LINE`]
/// bytes, one byte at a time so nothing after it is consumed.
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8(line).ok());
        }
        if line.len() == MAX_CONNECT_LINE {
            return Ok(None);
        }
        line.push(byte[0]);
    }
}

/// Finds the device node of the virtio-serial port named `name` by reading
/// `<sys_dir>/*/name` (normally `/sys/class/virtio-ports`); the node is
/// `/dev/<entry>`.
pub fn find_port(sys_dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_dir).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("name"))
                .map(|n| n.trim() == name)
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The virtio-serial port device, opened non-blocking.
///
/// Reads return 0 while no host is connected (hang-up); writes wait for a
/// host instead of queueing bytes for the next one.
#[derive(Debug)]
pub struct SerialPort {
    fd: AsyncFd<OwnedFd>,
}

impl SerialPort {
    /// Opens `path` read-write, non-blocking.
    ///
    /// # Errors
    /// [`AgentError::SerialPort`].
    pub fn open(path: &Path) -> Result<Self, AgentError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |source| AgentError::SerialPort {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(err)?;
        // SAFETY: an OwnedFd always returns the same open descriptor from
        // as_raw_fd, and it stays open until the AsyncFd (its owner) drops.
        let fd = unsafe { AsyncFd::register(OwnedFd::from(file)) }
            .map_err(|e| err(io::Error::from(e)))?;
        Ok(Self { fd })
    }
}

fn sys_read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes and `fd`
    // is an open descriptor owned by the caller for the duration of the call.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sys_write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes and `fd`
    // is an open descriptor owned by the caller for the duration of the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| sys_read(fd.get_ref(), unfilled)) {
                // A 0 (hang-up) keeps the readiness set: the pump waits and
                // reads again, since the port gives no reliable "host is
                // back" event.
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| sys_write(fd.get_ref(), buf)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Poll interval while no host is connected to the serial port.
pub const HANGUP_POLL: Duration = Duration::from_millis(20);

/// Opens the agent's virtio-serial port (found by name under
/// `/sys/class/virtio-ports`); `Ok(None)` when the guest has none.
///
/// # Errors
/// [`AgentError::SerialPort`] when the port exists but cannot be opened.
pub fn open_agent_port() -> Result<Option<(PathBuf, SerialPort)>, AgentError> {
    let Some(path) = find_port(Path::new("/sys/class/virtio-ports"), SERIAL_PORT_NAME) else {
        return Ok(None);
    };
    let port = SerialPort::open(&path)?;
    Ok(Some((path, port)))
}

/// Serves the opened serial port until the agent shuts down.
pub async fn serve_serial(port: SerialPort, ctx: Arc<AgentContext>) {
    if let Err(e) = run_session_pump(port, ctx, OnHangup::WaitAndRetry(HANGUP_POLL)).await {
        tracing::error!(error = %e, "serial channel failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunter_finds_preamble_among_noise() {
        let mut h = PreambleHunter::default();
        assert!(h.feed(b"garbage\xff\x00RESET 0123").is_none());
        let (nonce, used) = h.feed(b"456789abcdef\nrest").unwrap();
        assert_eq!(nonce, "0123456789abcdef");
        assert_eq!(used, 13);
        assert!(
            h.feed(b"\xffRESET 0123456789ABCDEF\n").is_none(),
            "uppercase refused"
        );
        assert!(h.feed(b"RESET 0123\n").is_none());
    }

    #[test]
    fn tracker_skips_data_bodies() {
        let mut t = MuxTracker::default();
        // data frame header with a 3-byte body that contains 0xff
        let mut f = vec![0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3];
        f.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(t.scan(&f), None);
        // window update (type 1) has no body; then a marker
        let mut g = vec![0u8, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9];
        g.push(0xff);
        assert_eq!(t.scan(&g), Some(12));
    }

    #[test]
    fn port_lookup_reads_names() {
        let dir = tempfile::tempdir().unwrap();
        for (entry, name) in [("vport0p1", "other"), ("vport0p2", SERIAL_PORT_NAME)] {
            std::fs::create_dir(dir.path().join(entry)).unwrap();
            std::fs::write(dir.path().join(entry).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_port(dir.path(), SERIAL_PORT_NAME),
            Some(PathBuf::from("/dev/vport0p2"))
        );
        assert_eq!(find_port(dir.path(), "missing"), None);
    }
}
