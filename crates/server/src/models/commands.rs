//! Bodies of `POST /sandboxes/{id}/exec`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /sandboxes/{id}/exec`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecBody {
    /// Command line, run with `/bin/sh -c`.
    #[schema(example = "ls -la /workspace")]
    pub command: String,
    /// Working directory (default `/workspace`).
    #[schema(example = "/workspace")]
    pub working_dir: Option<String>,
    /// Timeout in milliseconds (default: the server's `exec_timeout_sec`).
    #[schema(example = 120000)]
    pub timeout_ms: Option<u64>,
    /// Timeout in seconds; alternative to `timeout_ms` (not both).
    pub timeout_seconds: Option<u64>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text fed to the command's stdin (UTF-8).
    pub stdin: Option<String>,
    /// Bytes fed to stdin, base64 (alternative to `stdin`).
    pub stdin_b64: Option<String>,
    /// Run as this user (name or uid).
    pub user: Option<String>,
    /// Cap on each of stdout and stderr in bytes (default 1 MiB).
    pub max_output_bytes: Option<u64>,
    /// Answer with a live NDJSON stream (`start`, `stdout`/`stderr` lines
    /// as the output comes, then `end` with the exit) instead of one JSON
    /// result at the end.
    #[serde(default)]
    pub stream: bool,
}

/// Result of a command.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResult {
    /// Captured stdout (invalid UTF-8 replaced by U+FFFD).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Exit status; null when the command was killed by a signal.
    pub exit_code: Option<i32>,
    /// Null when the command ran to completion (whatever its exit code);
    /// otherwise why it did not (timeout, signal).
    #[schema(example = json!(null))]
    pub error: Option<String>,
    /// The timeout fired and the command's process group was killed.
    pub timed_out: bool,
    /// Output exceeded the cap and was cut.
    pub truncated: bool,
    /// Wall time in the guest, ms.
    pub duration_ms: u64,
    /// Signal that ended the command, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}
