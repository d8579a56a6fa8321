//! Client configuration.

use locale2b_protocol::DEFAULT_MAX_FRAME;
use std::time::Duration;

/// Timeouts and limits of an [`crate::AgentClient`].
///
/// The defaults suit a local guest: a Unix connect is instant, the `OK` line
/// comes within milliseconds once the guest's vsock driver (or the qemu
/// bridge's guest side) is up, and an agent answers ordinary requests quickly.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Limit on one Unix-socket `connect` (default 1 s).
    pub connect_timeout: Duration,
    /// Limit on waiting for the `OK <n>` line after `CONNECT <port>` (default
    /// 1 s). Firecracker neither answers nor closes a `CONNECT` sent before
    /// the guest's vsock driver is up, so every attempt needs this limit.
    pub handshake_timeout: Duration,
    /// The same limit once the agent has answered on this client (default
    /// 5 s): its vsock driver is up then, so a slow `OK` means a busy guest
    /// (many connections at once, emulated CPUs), not one still booting.
    pub ready_handshake_timeout: Duration,
    /// Limit on the `hello` exchange that opens every new connection
    /// (default 5 s).
    pub hello_timeout: Duration,
    /// Limit on one request/response exchange when the caller gives none
    /// (default 30 s).
    pub request_timeout: Duration,
    /// Largest frame sent or accepted (default [`DEFAULT_MAX_FRAME`]).
    pub max_frame: usize,
    /// Most connections being opened at once (connect, `CONNECT`, `hello`);
    /// more concurrent requests wait for a slot instead of all knocking at
    /// once (a guest under emulation accepts slowly). Default 8.
    pub max_opening: usize,
    /// Most idle connections kept for reuse (default 8).
    pub max_idle: usize,
    /// Idle connections older than this are closed instead of reused
    /// (default 60 s), well below the agent's own idle timeout (10 min), so
    /// a request never races the agent closing an idle connection.
    pub max_idle_age: Duration,
    /// Attempts to open a connection for one request before giving up
    /// (default 3; each waits `connect_timeout` + `handshake_timeout` +
    /// `hello_timeout` at most).
    pub connect_attempts: u32,
    /// First pause between attempts in [`crate::AgentClient::wait_ready`]
    /// and between connection attempts (default 20 ms); doubled per attempt.
    pub backoff_initial: Duration,
    /// Longest pause between attempts (default 200 ms).
    pub backoff_max: Duration,
    /// Name sent in `hello`, for the agent's log.
    pub client_name: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            ready_handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame: DEFAULT_MAX_FRAME,
            max_opening: 8,
            max_idle: 8,
            max_idle_age: Duration::from_secs(60),
            connect_attempts: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            client_name: format!("locale2b-agent-client/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}
