//! Host-side client of the locale2b guest agent.
//!
//! The agent's framed protocol ([`locale2b_protocol`]) is reached through a
//! *hybrid vsock* Unix socket: Firecracker's vsock socket, or the one the
//! qemu driver serves in front of its virtio-serial bridge. Both behave the
//! same: connect, write `CONNECT <port>\n`, read `OK <n>\n`, then frames
//! ([`hybrid_vsock_connect`]).
//!
//! [`AgentClient`] adds what a sandbox manager needs on top: a `hello`
//! version check on every connection, a small pool of idle connections,
//! per-request timeouts, [`AgentClient::wait_ready`] for a booting or resuming
//! guest, and retries that never re-send a request that may already have been
//! applied (see the retry rules on [`AgentClient`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), locale2b_agent_client::ClientError> {
//! use locale2b_agent_client::{AgentClient, ClientConfig};
//! use std::time::{Duration, Instant};
//!
//! let client = AgentClient::new("/run/sandbox/vsock.sock", ClientConfig::default());
//! let ready = client.wait_ready(Instant::now() + Duration::from_secs(10)).await?;
//! println!("agent {} up after {:?}", ready.pong.agent_version, ready.elapsed);
//! let pong = client.ping().await?;
//! # let _ = pong;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod client;
mod config;
mod conn;
mod connect;
mod error;

pub use client::{is_idempotent, AgentClient, AgentStream, Ready, StreamItem};
pub use config::ClientConfig;
pub use connect::{forward_connect, hybrid_vsock_connect};
pub use error::ClientError;
