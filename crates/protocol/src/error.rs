//! Structured errors carried in `error` frames.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. New codes may be added in later
/// protocol versions; a peer that does not know a code sees [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The path (or process, or user) does not exist.
    NotFound,
    /// The agent lacks the permission for the operation.
    PermissionDenied,
    /// A file operation was given a directory.
    IsADirectory,
    /// A directory operation was given something else.
    NotADirectory,
    /// The target exists and the request did not allow replacing it.
    AlreadyExists,
    /// A directory to delete is not empty and `recursive` was not set.
    DirectoryNotEmpty,
    /// A payload, file or frame exceeds a limit.
    TooLarge,
    /// The object is in a state that does not allow the operation (a
    /// signal to a process that has exited, input to a closed stdin).
    /// Added in protocol 2.
    InvalidState,
    /// An operation ran past its deadline.
    Timeout,
    /// The request is well-formed JSON but its content is not acceptable.
    InvalidRequest,
    /// The frame is not valid JSON or not a request at all.
    MalformedFrame,
    /// The action is not one this agent implements.
    UnknownAction,
    /// The peer speaks a protocol version this side does not.
    IncompatibleVersion,
    /// An I/O error not covered by a more specific code.
    Io,
    /// A bug in the agent.
    Internal,
    /// A code this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The snake_case wire name of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::IsADirectory => "is_a_directory",
            Self::NotADirectory => "not_a_directory",
            Self::AlreadyExists => "already_exists",
            Self::DirectoryNotEmpty => "directory_not_empty",
            Self::TooLarge => "too_large",
            Self::InvalidState => "invalid_state",
            Self::Timeout => "timeout",
            Self::InvalidRequest => "invalid_request",
            Self::MalformedFrame => "malformed_frame",
            Self::UnknownAction => "unknown_action",
            Self::IncompatibleVersion => "incompatible_version",
            Self::Io => "io",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }

    /// Maps an OS error kind to the closest code.
    pub fn from_io_kind(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind as K;
        match kind {
            K::NotFound => Self::NotFound,
            K::PermissionDenied => Self::PermissionDenied,
            K::AlreadyExists => Self::AlreadyExists,
            K::IsADirectory => Self::IsADirectory,
            K::NotADirectory => Self::NotADirectory,
            K::DirectoryNotEmpty => Self::DirectoryNotEmpty,
            K::TimedOut => Self::Timeout,
            K::InvalidInput | K::InvalidFilename => Self::InvalidRequest,
            K::FileTooLarge => Self::TooLarge,
            _ => Self::Io,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of an `error` frame: `{"code": "not_found", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// Stable code to branch on.
    pub code: ErrorCode,
    /// Human-readable explanation (names the path or limit involved).
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Builds an error body from an I/O error about `what` (usually a path).
    pub fn io(what: &str, err: &std::io::Error) -> Self {
        Self::new(
            ErrorCode::from_io_kind(err.kind()),
            format!("{what}: {err}"),
        )
    }
}
