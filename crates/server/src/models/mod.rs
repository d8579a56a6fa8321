//! Request and response bodies of the REST API (the public contract; see
//! `docs/api.md`). They are separate from the manager's and the protocol's
//! types so that the HTTP contract changes only on purpose.
//!
//! Unknown fields: bodies that CompyMac or the plan's scripts send
//! (create, exec, files/write) ignore unknown fields, because those clients
//! are not ours and may add fields; bodies only our own clients send
//! (mkdir, files/delete) refuse them (`deny_unknown_fields`) so a typo is a
//! 400, not a silently ignored option.

mod commands;
mod files;
mod health;
mod ports;
mod processes;
mod sandboxes;
mod workspaces;

pub use commands::*;
pub use files::*;
pub use health::*;
pub use ports::*;
pub use processes::*;
pub use sandboxes::*;
pub use workspaces::*;
