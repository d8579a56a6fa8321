//! The sandbox manager: lifecycle of sandboxes (VMs) and workspaces (their
//! persistent disks and snapshots), state on disk and recovery.
//!
//! Nothing here knows about HTTP: the server crate translates requests into
//! calls on [`SandboxManager`] and maps [`ManagerError`] to status codes.

#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod error;
mod manager;
pub mod model;
pub mod snapshot;
pub mod store;

pub use config::{Config, ConfigError, LogFormat, Secret, VmmChoice};
pub use error::{ManagerError, Result};
pub use manager::SandboxManager;
pub use model::*;
