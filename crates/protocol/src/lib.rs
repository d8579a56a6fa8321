//! The locale2b host–guest wire protocol.
//!
//! Both the host (sandbox manager, through `locale2b-agent-client`) and the
//! guest agent (`locale2b-agent`) depend on this crate, so the two sides
//! cannot disagree about a message's shape. The human-readable description,
//! with an example of every message, is `docs/protocol.md`.
//!
//! # Framing
//! Every message is one frame: a 4-byte big-endian payload length followed by
//! that many bytes of UTF-8 JSON. A frame longer than the negotiated maximum
//! ([`DEFAULT_MAX_FRAME`], 10 MiB, unless configured otherwise) is refused
//! *before* its payload is allocated ([`frame`]).
//!
//! Protocol 2 adds **data frames**: a header with the top bit set
//! ([`frame::DATA_FRAME_FLAG`]) announces raw bytes instead of JSON; the
//! first payload byte names the channel (stdin, stdout, stderr, pty). They
//! are only sent on a connection whose `hello` agreed on version 2.
//!
//! # Exchanges
//! The host sends a [`RequestFrame`] (`{"id", "request": {"action", ...}}`)
//! and the agent answers with one or more [`ResponseFrame`]s carrying the
//! same `id`. Most requests get exactly one final frame (`ok` or `error`).
//! Streamed requests ([`Request::is_streamed`], protocol 2) are answered by
//! `event` frames and data frames, then one final frame; the connection is
//! the stream, so it carries nothing else until the final frame.
//!
//! A connection (one vsock or multiplexed stream) carries requests one after
//! the other; concurrency comes from opening several connections.
//! The first request on a connection should be [`Request::Hello`]: the
//! connection then speaks the lower of the two versions (a v2 host and a v1
//! agent speak v1, and requests of v2 are refused with a clear error); a
//! host refuses an agent whose version range does not meet its own.

#![forbid(unsafe_code)]

pub mod error;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod process;

pub use error::{ErrorBody, ErrorCode};
pub use frame::{DataChannel, Frame, FrameError, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN};
pub use ids::{IdError, SandboxId, WorkspaceId};
pub use messages::*;
pub use process::*;

/// Version of the protocol described by this crate. Bumped on any change a
/// peer of the previous version would misread.
pub const PROTOCOL_VERSION: u32 = 4;

/// Oldest protocol version this crate can still talk to.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// First version with streamed answers, data frames and the process table.
pub const STREAMS_PROTOCOL_VERSION: u32 = 2;

/// First version with file owners (`owner` on writes and directories,
/// `owner`/`group` in file descriptions) and `watch_dir`.
pub const WATCH_PROTOCOL_VERSION: u32 = 3;

/// First version whose agent serves [`FORWARD_VSOCK_PORT`].
pub const FORWARD_PROTOCOL_VERSION: u32 = 4;

/// The vsock port the agent's framed protocol listens on.
pub const AGENT_VSOCK_PORT: u32 = 5000;

/// The vsock port of the agent's TCP forwarder. A stream opened on it
/// starts with the host's line `TCP <port>\n`; the agent connects to
/// `127.0.0.1:<port>` in the guest and answers `OK\n`, or `ERR <reason>\n`
/// and closes. After `OK` the stream carries that TCP connection's bytes
/// both ways, unframed; either side's end of stream is passed on as a
/// half-close.
pub const FORWARD_VSOCK_PORT: u32 = 5001;

/// Largest yamux frame either side of the qemu serial channel sends. The
/// library's default (16 KiB) costs a frame per 16 KiB; under emulation
/// every frame is expensive, so bulk output goes in larger ones.
pub const MUX_SPLIT_SEND_SIZE: usize = 128 * 1024;

/// Name of the virtio-serial port the qemu backend gives the guest; the agent
/// finds it under `/sys/class/virtio-ports/*/name`.
pub const SERIAL_PORT_NAME: &str = "org.locale2b.agent";

/// Version of this crate, reported by the agent in `hello`/`ping`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
