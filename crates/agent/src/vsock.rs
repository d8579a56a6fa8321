//! The agent channel of the Firecracker backend: AF_VSOCK port 5000.

use crate::conn::{is_transient_accept_error, serve_connection};
use crate::context::AgentContext;
use crate::AgentError;
use locale2b_protocol::AGENT_VSOCK_PORT;
use std::path::Path;
use std::sync::Arc;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// Binds AF_VSOCK [`AGENT_VSOCK_PORT`]; `Ok(None)` when the guest has no
/// vsock device.
///
/// # Errors
/// [`AgentError::Bind`].
pub fn bind_vsock() -> Result<Option<VsockListener>, AgentError> {
    if !Path::new("/dev/vsock").exists() {
        return Ok(None);
    }
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_VSOCK_PORT))
        .map(Some)
        .map_err(|source| AgentError::Bind {
            what: format!("vsock port {AGENT_VSOCK_PORT}"),
            source,
        })
}

/// Serves every connection accepted on `listener` until shutdown.
///
/// # Errors
/// [`AgentError::Accept`] when accepting fails for good.
pub async fn serve_vsock(
    listener: VsockListener,
    ctx: Arc<AgentContext>,
) -> Result<(), AgentError> {
    let what = format!("vsock port {AGENT_VSOCK_PORT}");
    tracing::info!(port = AGENT_VSOCK_PORT, "listening on vsock");
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown_token().cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, ctx.clone()));
            }
            Err(e) if is_transient_accept_error(&e) => {
                tracing::warn!(error = %e, "vsock accept failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(source) => return Err(AgentError::Accept { what, source }),
        }
    }
}
