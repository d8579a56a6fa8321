//! Messages of the agent's process table (protocol 2).
//!
//! A process is started with [`ProcessStartRequest`] and answered at once
//! with its id (the guest pid); it then runs on its own, whether a host is
//! connected or not. Its output (stdout and stderr kept apart, or one `pty`
//! stream) goes into a bounded buffer addressed by **byte cursors**: the
//! cursor of a byte is the number of output bytes (all streams together)
//! produced before it, so one cursor orders stdout and stderr as they were
//! produced. A reader asks for output from a cursor ([`ProcessOutputRequest`])
//! and is told exactly how many bytes the buffer no longer held
//! ([`crate::StreamEvent::Position`]'s `dropped`): never a silent gap.
//!
//! The model follows E2B's in-sandbox Process service one to one: processes
//! are addressed by pid or by a caller-chosen tag ([`ProcessSelector`]);
//! a start can stream its output (start, data, end events); a host can
//! re-attach to a running process by id (`process_output` with `follow`);
//! stdin, signals and PTY resize are their own requests.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default size of a process's output buffer: 8 MiB.
pub const DEFAULT_OUTPUT_BUFFER: u64 = 8 * 1024 * 1024;

/// Largest output buffer a process may ask for: 256 MiB.
pub const MAX_OUTPUT_BUFFER: u64 = 256 * 1024 * 1024;

/// Smallest output buffer a process may ask for: 4 KiB.
pub const MIN_OUTPUT_BUFFER: u64 = 4096;

/// Largest tag: 64 bytes.
pub const MAX_TAG_LEN: usize = 64;

/// Which process a request is about: `{"pid": 42}` or `{"tag": "shell-1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessSelector {
    /// The guest pid (the id `process_start` answered).
    Pid(u32),
    /// The tag given at start.
    Tag(String),
}

impl std::fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "process {pid}"),
            Self::Tag(tag) => write!(f, "process tagged {tag:?}"),
        }
    }
}

/// Size of a pseudo-terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    /// Rows (1–1000).
    pub rows: u16,
    /// Columns (1–1000).
    pub cols: u16,
}

impl PtySize {
    /// Checks the size.
    ///
    /// # Errors
    /// A message naming the bad dimension.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("rows", self.rows), ("cols", self.cols)] {
            if v == 0 || v > 1000 {
                return Err(format!("pty {name} must be between 1 and 1000 (got {v})"));
            }
        }
        Ok(())
    }
}

/// `process_start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessStartRequest {
    /// A shell command line, run with `/bin/sh -c` (exactly one of
    /// `command` and `argv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A program and its arguments, run without a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Working directory (`/workspace` when it exists, else `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment (over the sandbox's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run as this user (name or uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size (stdin, stdout and stderr are
    /// the terminal; output is one `pty` stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// A caller-chosen name, unique among running processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Give the process a stdin pipe (else `/dev/null`). Ignored with a PTY.
    #[serde(default)]
    pub stdin: bool,
    /// Bytes written to stdin at start, after which stdin is closed
    /// (base64; needs `stdin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_b64: Option<String>,
    /// Kill the process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Size of the output buffer ([`DEFAULT_OUTPUT_BUFFER`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// Answer with a stream instead of one frame: a `started` event, the
    /// output from cursor 0, and a final `output_end` once it exited (the
    /// same stream as `process_output` with `follow`).
    #[serde(default)]
    pub follow: bool,
    /// Forget the process once a `follow` stream delivered its end (for
    /// one-shot commands; it is then not listed).
    #[serde(default)]
    pub ephemeral: bool,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExit {
    /// Exit status; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The start's `timeout_ms` fired and the process group was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// Milliseconds from start to exit (guest clock).
    pub duration_ms: u64,
}

/// State of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Ended (kept for the retention time so late readers see the end).
    Exited(ProcessExit),
}

/// What the agent knows of one process. (Unknown fields are ignored: a
/// flattened enum cannot refuse them, and newer agents may add fields.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Guest pid (the process id in every request).
    pub pid: u32,
    /// Tag given at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Shell command line, when started with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, when started with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Working directory it started in.
    pub cwd: String,
    /// Extra environment it was given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The PTY size, for PTY processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Whether stdin can still be written.
    pub stdin_open: bool,
    /// Running or exited.
    #[serde(flatten)]
    pub state: ProcessState,
    /// Cursor of the first byte still in the output buffer.
    pub output_start: u64,
    /// Cursor after the last byte produced (total output so far).
    pub output_end: u64,
    /// Size of the output buffer.
    pub buffer_bytes: u64,
    /// Start time, milliseconds since the Unix epoch (guest clock).
    pub started_at_ms: u64,
}

/// `process_output`: output from `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessOutputRequest {
    /// The process.
    pub process: ProcessSelector,
    /// Cursor to read from (0 = from the beginning).
    #[serde(default)]
    pub cursor: u64,
    /// At most this many bytes (without `follow`); everything available
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Keep the stream open and send output as it is produced, until the
    /// process ended and all its output was sent.
    #[serde(default)]
    pub follow: bool,
}

/// `process_input`: bytes for stdin (or the PTY).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInputRequest {
    /// The process.
    pub process: ProcessSelector,
    /// The bytes, base64 (may be empty with `close`).
    #[serde(default)]
    pub data_b64: String,
    /// Close stdin after writing (not for a PTY: send Ctrl-D, 0x04).
    #[serde(default)]
    pub close: bool,
}

/// `process_signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSignalRequest {
    /// The process (the signal goes to its whole process group).
    pub process: ProcessSelector,
    /// Signal number (1–64).
    pub signal: i32,
}

/// `process_resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessResizeRequest {
    /// The process (must have a PTY).
    pub process: ProcessSelector,
    /// New size.
    pub size: PtySize,
}

/// A request naming one process (`process_status`, `process_remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRequest {
    /// The process.
    pub process: ProcessSelector,
}

/// The final frame of an output stream (`process_output`, or
/// `process_start` with `follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEnd {
    /// Cursor after the last byte sent: where the next read starts.
    pub next_cursor: u64,
    /// How the process ended, when it has (always set at the end of a
    /// `follow` stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ProcessExit>,
    /// No more output will come and all of it up to `next_cursor` was sent
    /// (always true at the end of a `follow` stream).
    #[serde(default)]
    pub complete: bool,
}

/// `processes`: every process in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessList {
    /// Running ones and exited ones still retained, by pid.
    pub processes: Vec<ProcessInfo>,
}

/// Names of the signals a caller may give by name, with their numbers.
pub const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGWINCH", 28),
];

/// Parses a signal given as a name (`SIGTERM`, `TERM`, case-insensitive)
/// or a number (1–64).
///
/// # Errors
/// A message listing what is accepted.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal number {n} is out of range 1-64"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNAL_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = SIGNAL_NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown signal {s:?}: give a number 1-64 or one of {}",
                names.join(", ")
            )
        })
}

/// Checks a tag: 1–64 of `[A-Za-z0-9._-]`, starting with a letter (so it
/// can never be mistaken for a pid).
///
/// # Errors
/// A message saying what a tag may hold.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.as_bytes()[0].is_ascii_alphabetic()
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid: 1-{MAX_TAG_LEN} of letters, digits, '.', '_', '-', starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_and_state_shapes() {
        assert_eq!(
            serde_json::to_value(ProcessSelector::Pid(4)).unwrap(),
            serde_json::json!({"pid": 4})
        );
        let t: ProcessSelector = serde_json::from_str(r#"{"tag":"sh"}"#).unwrap();
        assert_eq!(t, ProcessSelector::Tag("sh".into()));
        let exited = ProcessState::Exited(ProcessExit {
            exit_code: Some(3),
            signal: None,
            timed_out: false,
            duration_ms: 5,
        });
        assert_eq!(
            serde_json::to_value(&exited).unwrap(),
            serde_json::json!({"state": "exited", "exit_code": 3, "timed_out": false, "duration_ms": 5})
        );
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("kill"), Ok(9));
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGFOO").unwrap_err().contains("SIGTERM"));
    }

    #[test]
    fn tags() {
        assert!(validate_tag("shell-1").is_ok());
        assert!(validate_tag("1shell").is_err());
        assert!(validate_tag("").is_err());
        assert!(validate_tag("a b").is_err());
    }
}
