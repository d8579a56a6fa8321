//! Errors of the sandbox manager. The HTTP layer maps each variant to one
//! status code in a single place; nothing here knows about HTTP.

use std::time::Duration;

/// What kind of refusal a guest operation met (the guest agent's answer,
/// classified by the manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// No such file or directory.
    NotFound,
    /// The guest refused access.
    PermissionDenied,
    /// A directory where a file was expected.
    IsADirectory,
    /// A file where a directory was expected.
    NotADirectory,
    /// The request is invalid for the guest (bad path, unknown user, ...).
    InvalidRequest,
    /// The path exists already.
    AlreadyExists,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// The data does not fit (frame or size limit).
    TooLarge,
    /// The object is in a state that does not allow it (a signal to a
    /// process that has exited, input to a closed stdin).
    InvalidState,
    /// The agent failed in a way that is not the caller's fault (I/O
    /// error, internal error, protocol mismatch); `code` is the agent's.
    Failed {
        /// The agent's error code (`io`, `internal`, ...).
        code: &'static str,
    },
}

impl GuestErrorKind {
    /// Stable snake_case name (the API's error `code`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::IsADirectory => "is_a_directory",
            Self::NotADirectory => "not_a_directory",
            Self::InvalidRequest => "invalid_request",
            Self::AlreadyExists => "already_exists",
            Self::DirectoryNotEmpty => "directory_not_empty",
            Self::TooLarge => "too_large",
            Self::InvalidState => "invalid_state",
            Self::Failed { code } => code,
        }
    }
}

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
    /// The sandbox's guest agent is too old for the operation (an image
    /// built before it); the message says to rebuild the image.
    #[error("{0}")]
    Unsupported(String),
    /// The VMM backend in use cannot do this (e.g. fork with firecracker).
    #[error("{0}")]
    BackendUnsupported(String),
    /// A request carries more than a limit allows; the message names it.
    #[error("{0}")]
    TooLarge(String),
    /// The host's disk cannot back the disk a create asks for (free space
    /// minus the configured margin); the message gives the figures.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The owner (API key) of the sandbox is at one of its quotas; the
    /// message names the quota and the figures.
    #[error("{0}")]
    QuotaExceeded(String),
    /// This server cannot give sandboxes a network (not root, tools
    /// missing); the message says why.
    #[error("{0}")]
    NetworkUnavailable(String),
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
    /// The guest agent refused the operation (file not found, ...).
    #[error("{message}")]
    Guest {
        /// Classification.
        kind: GuestErrorKind,
        /// The agent's message.
        message: String,
    },
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

    /// Whether this failure is something not answering in time (the guest,
    /// the VMM or its control socket), which on a loaded host says nothing
    /// about what was being started.
    pub fn is_timeout(&self) -> bool {
        if matches!(self, Self::Timeout { .. }) {
            return true;
        }
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            if matches!(
                e.downcast_ref::<locale2b_vmm::VmmError>(),
                Some(locale2b_vmm::VmmError::Timeout { .. })
            ) {
                return true;
            }
            cur = e.source();
        }
        false
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

/// Prints an error and its whole source chain on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Result alias of the manager.
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
