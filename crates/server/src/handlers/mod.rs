//! Route handlers, one module per resource. Each handler turns an HTTP
//! request into one call on the [`SandboxService`](locale2b_manager::SandboxService)
//! (or one sandbox's [`GuestOps`](locale2b_manager::GuestOps)) and its
//! answer into a response body; the manager decides, and status codes are
//! chosen only in [`ApiError`](crate::ApiError)'s `IntoResponse`.
//!
//! | module | routes |
//! |---|---|
//! | `health` | `/health`, fallbacks |
//! | `sandboxes` | `/sandboxes`, `/sandboxes/{id}`, pause, resume |
//! | `commands` | `/sandboxes/{id}/exec` |
//! | `files` | `/sandboxes/{id}/files/...` |
//! | `processes` | `/sandboxes/{id}/processes/...`: background processes, live output, PTY WebSocket |
//! | `workspaces` | `/workspaces`, `/workspaces/{id}` |
//! | `ports` | `/sandboxes/{id}/ports...` (exposed ports) |

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

use crate::error::ApiError;
use axum::Json;
use locale2b_manager::ManagerError;
use std::future::Future;

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs a state-changing manager call in its own task, so that a client
/// hanging up does not cancel it half-way (the VM would be left in limbo).
async fn detached<T, F>(fut: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ManagerError>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(ManagerError::Internal {
            context: "manager task failed".into(),
            source: Some(Box::new(e)),
        })),
    }
}
