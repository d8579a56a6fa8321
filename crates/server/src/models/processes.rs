//! Bodies and queries of the process routes, and the lines of their live
//! streams (NDJSON).

use super::Encoding;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_manager::{
    OutputChunk, OutputEvent, OutputStream, ProcessExit, ProcessInfo, ProcessState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A PTY size.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySizeBody {
    /// Rows (1–1000).
    #[schema(minimum = 1, maximum = 1000, example = 24)]
    pub rows: u16,
    /// Columns (1–1000).
    #[schema(minimum = 1, maximum = 1000, example = 80)]
    pub cols: u16,
}

/// `POST /sandboxes/{id}/processes`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcessBody {
    /// Shell command line, run with `/bin/sh -c` (give this or `argv`).
    #[schema(example = "bash")]
    pub command: Option<String>,
    /// Program and arguments, run without a shell (give this or `command`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run as this user (name or uid).
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size.
    pub pty: Option<PtySizeBody>,
    /// A name to address the process by instead of its pid (unique among
    /// running processes; starts with a letter).
    #[schema(example = "shell-1")]
    pub tag: Option<String>,
    /// Give the process a stdin pipe (default true; ignored with a PTY).
    #[serde(default = "default_true")]
    pub stdin: bool,
    /// Kill the process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Size of its output buffer in bytes (default 8 MiB, 4 KiB–256 MiB).
    pub buffer_bytes: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// One process.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessResponse {
    /// Process id in the guest (use it in the process routes).
    pub pid: u32,
    /// Tag given at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Shell command line, when started with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, when started with them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// PTY size, for PTY processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySizeBody>,
    /// Whether stdin can still be written.
    pub stdin_open: bool,
    /// `running` or `exited`.
    #[schema(example = "running")]
    pub status: String,
    /// Exit status, once exited (null when a signal ended it).
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Its timeout fired.
    pub timed_out: bool,
    /// Run time, once exited.
    pub duration_ms: Option<u64>,
    /// Cursor of the first output byte still held.
    pub output_start: u64,
    /// Cursor after the last output byte (all output so far).
    pub output_end: u64,
    /// Output buffer size.
    pub buffer_bytes: u64,
    /// Start time, RFC 3339 (guest clock).
    pub started_at: String,
}

impl From<ProcessInfo> for ProcessResponse {
    fn from(p: ProcessInfo) -> Self {
        let exit = match &p.state {
            ProcessState::Running => None,
            ProcessState::Exited(e) => Some(e.clone()),
        };
        let started = std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.started_at_ms);
        Self {
            pid: p.pid,
            tag: p.tag,
            command: p.command,
            argv: p.argv,
            cwd: p.cwd,
            pty: p.pty.map(|s| PtySizeBody {
                rows: s.rows,
                cols: s.cols,
            }),
            stdin_open: p.stdin_open,
            status: if exit.is_some() { "exited" } else { "running" }.into(),
            exit_code: exit.as_ref().and_then(|e| e.exit_code),
            signal: exit.as_ref().and_then(|e| e.signal),
            timed_out: exit.as_ref().is_some_and(|e| e.timed_out),
            duration_ms: exit.as_ref().map(|e| e.duration_ms),
            output_start: p.output_start,
            output_end: p.output_end,
            buffer_bytes: p.buffer_bytes,
            started_at: humantime::format_rfc3339_millis(started).to_string(),
        }
    }
}

/// `GET /sandboxes/{id}/processes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessListResponse {
    /// Running processes and exited ones still kept, by pid.
    pub processes: Vec<ProcessResponse>,
}

/// Query of the output and stream routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputQuery {
    /// Cursor to read from (default 0: everything still held).
    pub cursor: Option<u64>,
    /// At most this many bytes (output route only).
    pub max_bytes: Option<u64>,
    /// `utf-8` (default; invalid sequences become U+FFFD) or `base64`
    /// (exact bytes).
    #[param(inline)]
    pub encoding: Option<Encoding>,
}

/// Bytes of one stream in an output answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputChunkBody {
    /// `stdout`, `stderr` or `pty`.
    #[schema(example = "stdout")]
    pub stream: String,
    /// Cursor of the first byte.
    pub cursor: u64,
    /// The bytes, encoded as the answer's `encoding` says.
    pub data: String,
}

/// `GET /sandboxes/{id}/processes/{pid}/output`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputResponse {
    /// Cursor of the first byte returned.
    pub cursor: u64,
    /// Bytes between the cursor asked for and `cursor` that the buffer no
    /// longer held (0: nothing was lost).
    pub dropped: u64,
    /// Where the next read starts.
    pub next_cursor: u64,
    /// All stdout bytes returned, in order.
    pub stdout: String,
    /// All stderr bytes returned, in order.
    pub stderr: String,
    /// PTY output (PTY processes only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pty: String,
    /// The same bytes as chunks, in the order they were produced across
    /// streams.
    pub chunks: Vec<OutputChunkBody>,
    /// `utf-8` or `base64`.
    pub encoding: Encoding,
    /// `running` or `exited`.
    pub status: String,
    /// Exit status, once exited.
    pub exit_code: Option<i32>,
    /// Signal that ended it.
    pub signal: Option<i32>,
    /// It exited and everything up to `next_cursor` was returned.
    pub complete: bool,
}

/// Encodes bytes for a JSON answer.
pub fn encode(data: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Base64 => B64.encode(data),
        Encoding::Utf8 => String::from_utf8_lossy(data).into_owned(),
    }
}

/// The wire name of an output stream.
pub fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stderr => "stderr",
        OutputStream::Pty => "pty",
        _ => "stdout",
    }
}

impl OutputResponse {
    /// Builds the answer.
    pub fn new(out: locale2b_manager::Output, encoding: Encoding) -> Self {
        let mut per: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for c in &out.chunks {
            per.entry(stream_name(c.stream))
                .or_default()
                .extend_from_slice(&c.data);
        }
        let take = |k: &str| per.get(k).map(|d| encode(d, encoding)).unwrap_or_default();
        Self {
            cursor: out.cursor,
            dropped: out.dropped,
            next_cursor: out.next_cursor,
            stdout: take("stdout"),
            stderr: take("stderr"),
            pty: take("pty"),
            chunks: out
                .chunks
                .iter()
                .map(|c: &OutputChunk| OutputChunkBody {
                    stream: stream_name(c.stream).into(),
                    cursor: c.cursor,
                    data: encode(&c.data, encoding),
                })
                .collect(),
            encoding,
            status: if out.exit.is_some() {
                "exited"
            } else {
                "running"
            }
            .into(),
            exit_code: out.exit.as_ref().and_then(|e| e.exit_code),
            signal: out.exit.as_ref().and_then(|e| e.signal),
            complete: out.complete,
        }
    }
}

/// `POST …/processes/{pid}/stdin`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinBody {
    /// Text to write (UTF-8).
    pub data: Option<String>,
    /// Bytes to write, base64 (instead of `data`).
    pub data_b64: Option<String>,
    /// Close stdin after writing (not for a PTY: send Ctrl-D instead).
    #[serde(default)]
    pub close: bool,
}

/// Result of a stdin write.
#[derive(Debug, Serialize, ToSchema)]
pub struct StdinResponse {
    /// The process.
    pub pid: u32,
    /// Bytes written.
    pub written: u64,
    /// Whether stdin is now closed.
    pub closed: bool,
}

/// `POST …/processes/{pid}/signal`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    /// A name (`SIGTERM`, `TERM`, `SIGINT`, `SIGKILL`, ...) or a number
    /// (1–64). Sent to the process's whole group.
    #[schema(value_type = String, example = "SIGTERM")]
    pub signal: serde_json::Value,
}

/// Result of a process action (signal, resize, removal).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessActionResponse {
    /// The process.
    pub pid: u32,
    /// What was done: `signalled`, `resized` or `removed`.
    #[schema(example = "signalled")]
    pub result: String,
}

/// One line of a live output stream (`…/stream`, `exec` with `stream`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamLine {
    /// The process runs (exec streams).
    Start {
        /// Its pid.
        pid: u32,
    },
    /// Output of stdout.
    Stdout {
        /// Cursor of the first byte.
        cursor: u64,
        /// The bytes, in the stream's encoding.
        data: String,
    },
    /// Output of stderr.
    Stderr {
        /// Cursor of the first byte.
        cursor: u64,
        /// The bytes, in the stream's encoding.
        data: String,
    },
    /// Output of the PTY.
    Pty {
        /// Cursor of the first byte.
        cursor: u64,
        /// The bytes, in the stream's encoding.
        data: String,
    },
    /// Bytes the buffer no longer held; the stream goes on at `cursor`.
    Dropped {
        /// How many.
        bytes: u64,
        /// Where the stream goes on.
        cursor: u64,
    },
    /// Nothing happened for a while (about every 15 s).
    Keepalive,
    /// The process ended; nothing follows.
    End {
        /// Cursor after the last byte.
        next_cursor: u64,
        /// Exit status (null when a signal ended it).
        exit_code: Option<i32>,
        /// Signal that ended it.
        signal: Option<i32>,
        /// Its timeout fired.
        timed_out: bool,
        /// Run time.
        duration_ms: u64,
    },
    /// The stream failed; nothing follows.
    Error {
        /// Stable code.
        code: String,
        /// What went wrong.
        message: String,
    },
}

impl StreamLine {
    /// The line for an event.
    pub fn from_event(e: OutputEvent, encoding: Encoding) -> Self {
        match e {
            OutputEvent::Started { pid } => Self::Start { pid },
            OutputEvent::Data(c) => {
                let (cursor, data) = (c.cursor, encode(&c.data, encoding));
                match c.stream {
                    OutputStream::Stderr => Self::Stderr { cursor, data },
                    OutputStream::Pty => Self::Pty { cursor, data },
                    _ => Self::Stdout { cursor, data },
                }
            }
            OutputEvent::Dropped { bytes, cursor } => Self::Dropped { bytes, cursor },
            OutputEvent::Keepalive => Self::Keepalive,
            OutputEvent::End { next_cursor, exit } => {
                let exit = exit.unwrap_or(ProcessExit {
                    exit_code: None,
                    signal: None,
                    timed_out: false,
                    duration_ms: 0,
                });
                Self::End {
                    next_cursor,
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    timed_out: exit.timed_out,
                    duration_ms: exit.duration_ms,
                }
            }
        }
    }
}
