//! Typed request and response messages.
//!
//! Requests are tagged by `action`, responses by `type`; every struct refuses
//! unknown fields so a typo in a field name is an `invalid_request`, not a
//! silently ignored option.

use crate::process::{
    OutputEnd, ProcessInfo, ProcessInputRequest, ProcessList, ProcessOutputRequest, ProcessRequest,
    ProcessResizeRequest, ProcessSignalRequest, ProcessStartRequest,
};
use crate::ErrorBody;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One request: `{"id": 1, "request": {"action": "ping"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the host, echoed in every response frame.
    pub id: u64,
    /// The request itself.
    pub request: Request,
}

/// One response frame: `{"id": 1, "ok": {...}}` or `{"id": 1, "error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The `id` of the request answered (0 when the request could not be parsed).
    pub id: u64,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The outcome carried by a response frame. `ok` and `error` are final;
/// `event` (protocol 2) is not: more frames of the same answer follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request succeeded.
    Ok(Response),
    /// The request failed.
    Error(ErrorBody),
    /// A non-final event of a streamed answer (protocol 2).
    Event(StreamEvent),
}

impl Outcome {
    /// Whether this frame ends the answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Event(_))
    }
}

/// Non-final events of a streamed answer (protocol 2). Output bytes travel
/// in data frames between them (see [`crate::frame`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// `process_start` with `follow`: the process runs with this pid.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// The data frames that follow start at `cursor`; `dropped` bytes
    /// before it were no longer in the buffer (0 when nothing was lost).
    Position {
        /// Cursor of the next data byte.
        cursor: u64,
        /// Bytes skipped since the cursor asked for (or since the last
        /// position event).
        dropped: u64,
    },
    /// Nothing to send for a while; the stream is alive.
    Keepalive,
    /// `watch_dir` (protocol 3): the watches are in place; changes from now
    /// on are reported.
    Watching,
    /// `read_stream` (protocol 3): the file is open; its size when it has
    /// one (pipes, devices and pseudo-files have none). The bytes follow as
    /// data frames on channel 1.
    FileOpen {
        /// Size in bytes, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// `watch_dir` (protocol 3): one change under the watched directory.
    Fs {
        /// Path of the changed entry relative to the watched directory.
        name: String,
        /// What happened.
        op: FsOp,
    },
}

/// What happened to a watched entry (one event per kind of change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsOp {
    /// Created (or moved in).
    Create,
    /// Content written.
    Write,
    /// Removed.
    Remove,
    /// Renamed away (moved out or renamed; the new name arrives as `create`).
    Rename,
    /// Attributes changed (mode, owner, times).
    Chmod,
}

/// Every action the agent implements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    /// Version handshake; should be the first request on a connection.
    Hello(HelloRequest),
    /// Liveness check.
    Ping,
    /// Run a command through `/bin/sh -c`.
    Exec(ExecRequest),
    /// Read (part of) a file.
    ReadFile(ReadFileRequest),
    /// Write a file (atomic replace, or append).
    WriteFile(WriteFileRequest),
    /// List a directory.
    ListFiles(ListFilesRequest),
    /// Create a directory.
    Mkdir(MkdirRequest),
    /// Describe one path.
    Stat(PathRequest),
    /// Delete a file or directory.
    DeleteFile(DeleteFileRequest),
    /// Rename (move) a path inside the guest; replaces an existing file.
    Rename(RenameRequest),
    /// Set identity, clock and environment after boot or restore.
    Init(InitRequest),
    /// Flush every filesystem to its disk (`sync(2)`); answered when done.
    Sync,
    /// Sync, unmount what can be unmounted and power the guest off. Answered
    /// (`done`) before the power-off starts; the connection then drops.
    Shutdown,
    /// Start a process in the process table (protocol 2).
    ProcessStart(ProcessStartRequest),
    /// List the process table (protocol 2).
    ProcessList,
    /// Describe one process (protocol 2).
    ProcessStatus(ProcessRequest),
    /// Output of a process from a cursor, optionally following it live
    /// (protocol 2; a streamed answer).
    ProcessOutput(ProcessOutputRequest),
    /// Write to a process's stdin or PTY (protocol 2).
    ProcessInput(ProcessInputRequest),
    /// Send a signal to a process's group (protocol 2).
    ProcessSignal(ProcessSignalRequest),
    /// Resize a process's PTY (protocol 2).
    ProcessResize(ProcessResizeRequest),
    /// Kill a process if it runs and forget it (protocol 2).
    ProcessRemove(ProcessRequest),
    /// Report changes under a directory until the host closes the stream
    /// (protocol 3; a streamed answer).
    WatchDir(WatchDirRequest),
    /// A file's bytes as data frames, from one open file (protocol 3; a
    /// streamed answer).
    ReadStream(ReadStreamRequest),
    /// Write a file from data frames the host sends after the request
    /// (protocol 3; a streamed request).
    WriteStream(WriteStreamRequest),
}

impl Request {
    /// The wire name of the action, for logs.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Ping => "ping",
            Self::Exec(_) => "exec",
            Self::ReadFile(_) => "read_file",
            Self::WriteFile(_) => "write_file",
            Self::ListFiles(_) => "list_files",
            Self::Mkdir(_) => "mkdir",
            Self::Stat(_) => "stat",
            Self::DeleteFile(_) => "delete_file",
            Self::Rename(_) => "rename",
            Self::Init(_) => "init",
            Self::Sync => "sync",
            Self::Shutdown => "shutdown",
            Self::ProcessStart(_) => "process_start",
            Self::ProcessList => "process_list",
            Self::ProcessStatus(_) => "process_status",
            Self::ProcessOutput(_) => "process_output",
            Self::ProcessInput(_) => "process_input",
            Self::ProcessSignal(_) => "process_signal",
            Self::ProcessResize(_) => "process_resize",
            Self::ProcessRemove(_) => "process_remove",
            Self::WatchDir(_) => "watch_dir",
            Self::ReadStream(_) => "read_stream",
            Self::WriteStream(_) => "write_stream",
        }
    }

    /// The protocol version that introduced this action.
    pub fn since_version(&self) -> u32 {
        match self {
            Self::ProcessStart(_)
            | Self::ProcessList
            | Self::ProcessStatus(_)
            | Self::ProcessOutput(_)
            | Self::ProcessInput(_)
            | Self::ProcessSignal(_)
            | Self::ProcessResize(_)
            | Self::ProcessRemove(_) => crate::STREAMS_PROTOCOL_VERSION,
            Self::WatchDir(_) | Self::ReadStream(_) | Self::WriteStream(_) => {
                crate::WATCH_PROTOCOL_VERSION
            }
            Self::WriteFile(r) if r.owner.is_some() || r.in_place => crate::WATCH_PROTOCOL_VERSION,
            Self::Mkdir(r) if r.owner.is_some() => crate::WATCH_PROTOCOL_VERSION,
            _ => 1,
        }
    }

    /// Whether the answer is a stream of frames (events, data, then a
    /// final frame) rather than one frame.
    pub fn is_streamed(&self) -> bool {
        match self {
            Self::ProcessOutput(_)
            | Self::WatchDir(_)
            | Self::ReadStream(_)
            | Self::WriteStream(_) => true,
            Self::ProcessStart(r) => r.follow,
            _ => false,
        }
    }
}

/// Successful answers, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `hello`.
    Hello(HelloResponse),
    /// Answer to `ping`.
    Pong(PongResponse),
    /// Answer to `exec`.
    Exec(ExecResponse),
    /// Answer to `read_file`.
    FileContent(FileContent),
    /// Answer to `write_file`.
    Written(WrittenResponse),
    /// Answer to `list_files`.
    Listing(Listing),
    /// Answer to `stat` and `mkdir`.
    Stat(FileInfo),
    /// Answer to `delete_file`, `rename`, `init`, `sync`, `shutdown`,
    /// `process_input`, `process_signal`, `process_resize` and
    /// `process_remove`.
    Done,
    /// Answer to `process_start` (without `follow`) and `process_status`.
    Process(ProcessInfo),
    /// Answer to `process_list`.
    Processes(ProcessList),
    /// Final frame of an output stream.
    OutputEnd(OutputEnd),
    /// Final frame of `read_stream` (protocol 3).
    FileRead(FileReadEnd),
}

/// `read_stream` (protocol 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStreamRequest {
    /// File to read.
    pub path: String,
    /// First byte.
    #[serde(default)]
    pub offset: u64,
    /// Most bytes to send; to the end when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Read and hash, but send no data frames (a checksum).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard: bool,
    /// Hash the bytes sent too (`discard` always hashes). Off by default:
    /// hashing in an emulated guest costs more than moving the bytes, and
    /// the host can hash what it receives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hash: bool,
}

/// Final frame of `read_stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReadEnd {
    /// Bytes read (and sent, unless `discard`).
    pub bytes: u64,
    /// The end of the file was reached.
    pub eof: bool,
    /// SHA-256 of those bytes, lowercase hex (with `discard` or `hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `write_stream` (protocol 3): the file's bytes follow the request as data
/// frames on channel 0; an empty one ends them. The file is written to a
/// temporary file renamed over the target at the end (unless `in_place`),
/// so a reader sees the old or the new file; a stream the host abandons
/// leaves the target untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteStreamRequest {
    /// File to write.
    pub path: String,
    /// Permission bits; a replaced file's when absent, else 0o644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Create missing parent directories.
    #[serde(default)]
    pub create_parents: bool,
    /// Owner of the file and of the parents created (a replaced file's
    /// owner when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Write the target itself (truncated) instead of a temporary file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
    /// Expected SHA-256 (hex) of the bytes: on a mismatch nothing is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `hello`: the host announces its protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloRequest {
    /// Protocol version the host speaks.
    pub protocol_version: u32,
    /// Free-form host name and version, for the agent's log.
    #[serde(default)]
    pub client: String,
}

/// The agent's side of the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloResponse {
    /// Protocol version the agent speaks.
    pub protocol_version: u32,
    /// Oldest protocol version the agent accepts.
    pub min_protocol_version: u32,
    /// Agent version (semver).
    pub agent_version: String,
}

/// Answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PongResponse {
    /// Agent version (semver).
    pub agent_version: String,
    /// Milliseconds since the agent started (does not advance while a
    /// snapshot sits on disk).
    pub uptime_ms: u64,
    /// Sandbox id set by the last `init`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
}

/// Default cap on each of stdout and stderr for `exec`: 1 MiB.
pub const DEFAULT_EXEC_OUTPUT_LIMIT: u64 = 1024 * 1024;

/// `exec`: run `/bin/sh -c command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Shell command line.
    pub command: String,
    /// Working directory; the agent's default (`/workspace` if it exists,
    /// else `/`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Extra environment variables (added to the sandbox defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Bytes fed to the command's stdin, base64; stdin is empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_b64: Option<String>,
    /// Kill the whole process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run as this user (name or numeric uid); the agent's user when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Cap on each of stdout and stderr; output beyond it is discarded and
    /// `truncated` set. Defaults to [`DEFAULT_EXEC_OUTPUT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// Result of `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResponse {
    /// Captured stdout (invalid UTF-8 replaced by U+FFFD).
    pub stdout: String,
    /// Captured stderr (invalid UTF-8 replaced by U+FFFD).
    pub stderr: String,
    /// Exit status; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Signal that ended the command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The timeout fired and the process group was killed.
    pub timed_out: bool,
    /// stdout or stderr exceeded the cap and was cut.
    pub truncated: bool,
    /// Wall time from spawn to exit, measured in the guest.
    pub duration_ms: u64,
}

/// `read_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadFileRequest {
    /// Absolute guest path (relative paths are resolved from `/workspace`).
    pub path: String,
    /// Byte offset to start at.
    #[serde(default)]
    pub offset: u64,
    /// Maximum bytes to return; the whole rest of the file when absent. A
    /// read whose answer would not fit in a frame fails with `too_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// Content returned by `read_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContent {
    /// The bytes read, base64.
    pub content_b64: String,
    /// Offset of the first byte returned.
    pub offset: u64,
    /// Total size of the file.
    pub size: u64,
    /// True when the read reached the end of the file.
    pub eof: bool,
}

/// How `write_file`'s `content` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// Standard base64 (RFC 4648, with padding).
    #[default]
    Base64,
    /// The string's UTF-8 bytes as they are.
    #[serde(rename = "utf-8", alias = "utf8", alias = "text")]
    Utf8,
}

/// `write_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFileRequest {
    /// Absolute guest path (relative paths are resolved from `/workspace`).
    pub path: String,
    /// The content, encoded as `encoding` says.
    pub content: String,
    /// Encoding of `content`; base64 when absent.
    #[serde(default)]
    pub encoding: ContentEncoding,
    /// Permission bits for a new file (default 0o644); an existing file's
    /// mode is kept unless this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Create missing parent directories.
    #[serde(default)]
    pub create_parents: bool,
    /// Append to the file instead of replacing it atomically (used for
    /// chunked uploads).
    #[serde(default)]
    pub append: bool,
    /// User (name) that owns the file and the parents this write creates
    /// (protocol 3); root, or the replaced file's owner, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Truncate and write the file itself instead of replacing it
    /// atomically (protocol 3): watchers see the file written, not a
    /// temporary file renamed; readers may see it half-written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
}

/// Result of `write_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrittenResponse {
    /// The path written.
    pub path: String,
    /// Size of the file after the write.
    pub size: u64,
    /// SHA-256 of the bytes written (`write_stream` only), lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Default and maximum number of entries `list_files` returns.
pub const DEFAULT_LIST_MAX_ENTRIES: u32 = 10_000;

/// `list_files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilesRequest {
    /// Directory to list.
    pub path: String,
    /// Descend into subdirectories (symlinks are not followed).
    #[serde(default)]
    pub recursive: bool,
    /// Deepest level listed when recursive (1 = direct children only); default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Stop after this many entries and set `truncated`; default and maximum
    /// [`DEFAULT_LIST_MAX_ENTRIES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u32>,
}

/// Result of `list_files`, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    /// The entries.
    pub entries: Vec<FileInfo>,
    /// A cap was reached and entries were left out.
    pub truncated: bool,
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Directory,
    /// Symbolic link (not followed).
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// Description of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    /// Last path component.
    pub name: String,
    /// Full guest path.
    pub path: String,
    /// Entry kind (of the link itself for symlinks).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// Owner's user name, or the uid as digits when it has no name
    /// (protocol 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name, or the gid as digits (protocol 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl FileInfo {
    /// The description as a peer of `version` reads it (fields of later
    /// versions left out).
    #[must_use]
    pub fn for_version(mut self, version: u32) -> Self {
        if version < crate::WATCH_PROTOCOL_VERSION {
            self.owner = None;
            self.group = None;
        }
        self
    }
}

impl Response {
    /// The answer as a peer of `version` reads it (fields of later versions
    /// left out).
    #[must_use]
    pub fn for_version(self, version: u32) -> Self {
        match self {
            Self::Stat(info) => Self::Stat(info.for_version(version)),
            Self::Listing(mut l) => {
                l.entries = l
                    .entries
                    .into_iter()
                    .map(|e| e.for_version(version))
                    .collect();
                Self::Listing(l)
            }
            other => other,
        }
    }
}

/// `watch_dir` (protocol 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchDirRequest {
    /// Directory to watch.
    pub path: String,
    /// Watch every subdirectory too (including ones created later).
    #[serde(default)]
    pub recursive: bool,
}

/// `mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Directory to create.
    pub path: String,
    /// Create missing parents; an existing directory is then not an error.
    #[serde(default)]
    pub parents: bool,
    /// Permission bits (default 0o755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// User (name) that owns the directories this call creates (protocol
    /// 3); root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A request naming one path (`stat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRequest {
    /// Guest path.
    pub path: String,
}

/// `delete_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteFileRequest {
    /// Path to delete (a symlink itself, never its target).
    pub path: String,
    /// Delete a non-empty directory with everything in it.
    #[serde(default)]
    pub recursive: bool,
}

/// `rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// Existing path.
    pub from: String,
    /// New path (replaced if it is a file).
    pub to: String,
}

/// `init`: sent by the host after boot and after every restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// The sandbox id now running this guest.
    pub sandbox_id: String,
    /// The workspace this guest belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Hostname to set (defaults to the sandbox id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Host wall clock, ms since the Unix epoch; the guest clock is set to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_time_ms: Option<u64>,
    /// Default environment for every later `exec`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Bytes (base64) mixed into the guest's entropy pool, so clones restored
    /// from one snapshot do not share random state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy_b64: Option<String>,
    /// How long the process table keeps exited processes, seconds
    /// (protocol 2; only sent to an agent that speaks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_retention_sec: Option<u64>,
    /// Addressing of the guest's NIC (`eth0`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<GuestNetwork>,
}

/// How `init` sets up the guest's network device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The guest's address with its prefix, e.g. `10.254.0.2/30`.
    pub address: String,
    /// Default gateway.
    pub gateway: String,
    /// The only `nameserver` of `/etc/resolv.conf`.
    pub nameserver: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn request_shape() {
        let frame: RequestFrame =
            serde_json::from_str(r#"{"id":3,"request":{"action":"exec","command":"ls"}}"#).unwrap();
        assert_eq!(frame.id, 3);
        assert!(
            matches!(frame.request, Request::Exec(ExecRequest { ref command, .. }) if command == "ls")
        );
        let ping = serde_json::to_value(RequestFrame {
            id: 1,
            request: Request::Ping,
        })
        .unwrap();
        assert_eq!(
            ping,
            serde_json::json!({"id": 1, "request": {"action": "ping"}})
        );
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        assert!(serde_json::from_str::<RequestFrame>(
            r#"{"id":1,"request":{"action":"exec","command":"ls","cwd":"/"}}"#
        )
        .is_err());
        let err = serde_json::from_str::<RequestFrame>(r#"{"id":1,"request":{"action":"fly"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn response_shapes() {
        let ok = ResponseFrame {
            id: 2,
            outcome: Outcome::Ok(Response::Done),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"id":2,"ok":{"type":"done"}})
        );
        let err = ResponseFrame {
            id: 2,
            outcome: Outcome::Error(ErrorBody::new(ErrorCode::NotFound, "/x: no such file")),
        };
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":2,"error":{"code":"not_found","message":"/x: no such file"}})
        );
        let back: ResponseFrame = serde_json::from_value(v).unwrap();
        assert_eq!(back, err);
    }

    #[test]
    fn encoding_names() {
        for (s, e) in [
            ("\"base64\"", ContentEncoding::Base64),
            ("\"utf-8\"", ContentEncoding::Utf8),
            ("\"utf8\"", ContentEncoding::Utf8),
        ] {
            assert_eq!(serde_json::from_str::<ContentEncoding>(s).unwrap(), e);
        }
    }
}
