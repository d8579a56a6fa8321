//! Errors of the sandbox manager. The HTTP layer maps each variant to one
//! status code in a single place; nothing here knows about HTTP.

use locale2b_protocol::ErrorBody;
use std::time::Duration;

/// What went wrong, classified by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is invalid (caller's fault); the message says what to fix.
    #[error("{0}")]
    InvalidInput(String),
    /// No such sandbox / workspace / template.
    #[error("{kind} {id} not found")]
    NotFound {
        /// "sandbox", "workspace", "template".
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The object is in a state that does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// No room for another sandbox now.
    #[error("{reason}")]
    AtCapacity {
        /// Which limit was hit.
        reason: String,
        /// When it may be worth retrying.
        retry_after: Duration,
    },
    /// A snapshot failed validation (corrupt, truncated, made for another
    /// kernel/rootfs). Nothing was changed; the sandbox stays paused.
    #[error("{0}")]
    SnapshotInvalid(String),
    /// The guest agent answered with an error (file not found, ...).
    #[error("{0}")]
    Guest(ErrorBody),
    /// The guest did not answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: String,
        /// After how long.
        after: Duration,
    },
    /// The VM could not be started or is broken (bad image, VMM crash, agent
    /// unreachable). The message is safe to show; the chain is logged.
    #[error("{message}")]
    Vm {
        /// What failed, for the caller.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A bug or a host failure (disk full, permissions on the base dir).
    #[error("{context}")]
    Internal {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ManagerError {
    /// Builds an [`ManagerError::Internal`] from an I/O error.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Internal {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Builds a [`ManagerError::Vm`] error with a source.
    pub fn vm(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Vm {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Result alias of the manager.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
