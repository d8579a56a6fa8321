//! Errors returned by the agent client.

use locale2b_protocol::{ErrorBody, FrameError};
use std::path::PathBuf;
use std::time::Duration;

/// Why a call to the agent failed.
///
/// [`ClientError::is_retryable`] tells whether trying again later (on a new
/// connection) may succeed; it does not say that the client retried.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hybrid-vsock Unix socket could not be connected (missing file,
    /// nobody listening).
    #[error("cannot connect to agent socket {}", path.display())]
    Connect {
        /// Host path of the Unix socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The `CONNECT <port>` exchange failed: the socket closed (nobody serves
    /// the port) or answered something other than `OK <n>`.
    #[error("hybrid vsock handshake failed: {0}")]
    Handshake(String),
    /// The agent's TCP forwarder could not reach the guest port (nothing
    /// listens there); the agent's reason.
    #[error("{0}")]
    ForwardRefused(String),
    /// A step did not finish in time. The connection it used is dropped.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The step that timed out (`connect`, `CONNECT reply`, `exec`, ...).
        what: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The agent answered with an `error` frame.
    #[error("agent error")]
    Agent(#[source] ErrorBody),
    /// The agent answered something the protocol does not allow here
    /// (wrong response type, wrong id).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The agent speaks no protocol version this client speaks. Never retried.
    #[error(
        "incompatible agent {agent_version}: it speaks protocol {agent_min_protocol}..={agent_protocol}, \
         this client speaks {ours_min}..={ours}"
    )]
    IncompatibleAgent {
        /// The agent's version string.
        agent_version: String,
        /// The agent's protocol version.
        agent_protocol: u32,
        /// Oldest protocol version the agent accepts.
        agent_min_protocol: u32,
        /// This client's protocol version.
        ours: u32,
        /// Oldest protocol version this client accepts.
        ours_min: u32,
    },
    /// A frame could not be read, written or decoded.
    #[error("agent connection failed")]
    Frame(#[source] FrameError),
    /// Another I/O error on the connection.
    #[error("agent connection i/o failed")]
    Io(#[source] std::io::Error),
    /// The agent speaks an older protocol than the request needs (a guest
    /// image built before the feature). Never retried.
    #[error(
        "the guest agent speaks protocol {agent_protocol}, but {action} needs protocol {needs}; \
         rebuild the guest image (`locale2b image build`) to get a newer agent"
    )]
    Unsupported {
        /// The request.
        action: &'static str,
        /// The version it needs.
        needs: u32,
        /// The version the connection speaks.
        agent_protocol: u32,
    },
    /// [`crate::AgentClient::wait_ready`] reached its deadline; `last` is the
    /// failure of the last attempt.
    #[error("agent not ready after {after:?} ({attempts} attempts)")]
    NotReady {
        /// Time spent waiting.
        after: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// Why the last attempt failed.
        #[source]
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// True when the failure is about reaching the agent (socket, handshake,
    /// timeout, broken connection), so a later attempt on a new connection
    /// may succeed. False for answers of the agent itself (error frames,
    /// protocol violations, incompatible versions) and for [`Self::NotReady`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Handshake(_) | Self::Timeout { .. } | Self::Io(_) => true,
            Self::Frame(e) => matches!(e, FrameError::Io(_) | FrameError::Truncated),
            Self::Agent(_)
            | Self::Protocol(_)
            | Self::ForwardRefused(_)
            | Self::IncompatibleAgent { .. }
            | Self::Unsupported { .. } => false,
            Self::NotReady { .. } => false,
        }
    }

    /// True for [`Self::Timeout`] and [`Self::NotReady`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::NotReady { .. })
    }

    /// A short, stable code for logs and for mapping to API errors: the
    /// agent's error code for [`Self::Agent`], else the variant's name.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Handshake(_) => "handshake",
            Self::Timeout { .. } => "timeout",
            Self::Agent(body) => body.code.as_str(),
            Self::Protocol(_) => "protocol",
            Self::ForwardRefused(_) => "forward_refused",
            Self::IncompatibleAgent { .. } => "incompatible_agent",
            Self::Unsupported { .. } => "unsupported",
            Self::Frame(_) => "frame",
            Self::Io(_) => "io",
            Self::NotReady { .. } => "not_ready",
        }
    }

    /// The agent's error body, when the agent answered with an error frame.
    pub fn agent_error(&self) -> Option<&ErrorBody> {
        match self {
            Self::Agent(body) => Some(body),
            _ => None,
        }
    }

    pub(crate) fn timeout(what: impl Into<String>, after: Duration) -> Self {
        Self::Timeout {
            what: what.into(),
            after,
        }
    }
}
