//! Handlers of the process requests (protocol 2): they give the process
//! table what it needs from the agent's context.

use crate::context::AgentContext;
use crate::process::{Proc, SpawnContext};
use base64::Engine as _;
use locale2b_protocol::{ErrorBody, ErrorCode, ProcessInputRequest, ProcessStartRequest, Response};
use std::sync::Arc;

/// `process_start`.
///
/// # Errors
/// As [`crate::process::ProcessTable::start`].
pub async fn start(
    ctx: &Arc<AgentContext>,
    req: &ProcessStartRequest,
) -> Result<Arc<Proc>, ErrorBody> {
    let spawn = SpawnContext {
        children: ctx.children.clone(),
        workspace_dir: ctx.config.workspace_dir.clone(),
        sandbox_env: ctx.state().env,
    };
    ctx.processes.start(&spawn, req).await
}

/// `process_input`.
///
/// # Errors
/// `invalid_request` for bad base64; as [`Proc::input`].
pub async fn input(
    ctx: &Arc<AgentContext>,
    req: &ProcessInputRequest,
) -> Result<Response, ErrorBody> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(&req.data_b64)
        .map_err(|e| {
            ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("data_b64 is not valid base64: {e}"),
            )
        })?;
    ctx.processes
        .get(&req.process)?
        .input(&data, req.close)
        .await
        .map(|()| Response::Done)
}
