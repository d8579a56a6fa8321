//! The sandbox manager: lifecycle of sandboxes (VMs) and workspaces (their
//! persistent disks and snapshots), state on disk and recovery.
//!
//! Nothing here knows about HTTP: the server crate holds a
//! [`SandboxService`], translates requests into its calls and maps
//! [`ManagerError`] to status codes.
//!
//! | module | owns |
//! |---|---|
//! | [`service`] | the traits callers hold: [`SandboxService`], [`GuestOps`] |
//! | `manager` | [`SandboxManager`]: create, destroy, pause/resume, recovery, workspaces |
//! | [`sandbox`] | [`sandbox::Sandbox`]: one sandbox in memory and its status rules |
//! | [`registry`] | the table of sandboxes, workspace locks, admission against capacity |
//! | [`guest`] | [`guest::Guest`]: the one way to a running guest, exec rules, guest error classes |
//! | [`store`] | the base directory: layout, typed records, disks, atomic files |
//! | [`snapshot`] | snapshot manifests, checksums, validation |
//! | [`image`] | the installed image of a template |
//! | [`host`] | host processes (kill, orphan scan, usage), host memory and disk |
//! | [`cgroup`] | host limits per VMM (cgroup v2 or v1) |
//! | [`metrics`] | counters, latency histograms, Prometheus text |
//! | [`backend`] | building the VMM backend from its configuration |
//! | [`model`] | the values callers pass and get back |
//! | [`error`] | [`ManagerError`] |

#![deny(unsafe_code)]

pub mod backend;
pub mod cgroup;
pub mod error;
pub mod guest;
pub mod host;
pub mod image;
mod manager;
pub mod metrics;
pub mod model;
pub mod network;
pub mod registry;
pub mod sandbox;
pub mod service;
pub mod snapshot;
pub mod store;

pub use error::{GuestErrorKind, ManagerError, Result};
pub use guest::PortConn;
pub use locale2b_config::{Boot, ManagerConfig, VmmConfig};
pub use manager::{new_token, SandboxManager, CRASH_POINTS, MAX_FORK_CHILDREN};
pub use model::*;
pub use registry::{OwnerQuota, QuotaSource};
pub use service::{GuestOps, SandboxService};
