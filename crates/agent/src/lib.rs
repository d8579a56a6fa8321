//! The locale2b guest agent.
//!
//! The agent serves the host–guest protocol of [`locale2b_protocol`] on
//! plain byte streams. Every listener (a Unix socket for tests on the host,
//! AF_VSOCK port 5000 under Firecracker, yamux streams over a virtio-serial
//! port under QEMU) hands each accepted stream to [`serve_connection`], so
//! the request handlers are identical for every transport.
//!
//! When it runs as PID 1 (or as `locale2b-agent init`) the agent first sets
//! up the guest ([`init`]): pseudo filesystems, the writable overlay root,
//! zombie reaping and signal handling.

pub mod children;
pub mod command;
pub mod conn;
pub mod context;
pub mod dispatch;
pub mod exec;
pub mod filestream;
pub mod forward;
pub mod fs;
pub mod init;
pub mod process;
pub mod processes;
pub mod serial;
pub mod system;
pub mod vsock;
pub mod watch;

pub use conn::{serve_connection, serve_unix};
pub use context::{AgentContext, Config};

/// Failures of the agent's listeners and of its setup as init.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Binding a listening socket failed.
    #[error("cannot listen on {what}")]
    Bind {
        /// The address or path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a connection failed in a way that stops the listener.
    #[error("accept failed on {what}")]
    Accept {
        /// The address or path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Opening the virtio-serial port failed.
    #[error("cannot open serial port {path}")]
    SerialPort {
        /// The device path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A system call needed by init mode failed.
    #[error("init step failed: {step}")]
    Init {
        /// What was being done.
        step: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
