//! The agent channel of the Firecracker backend: AF_VSOCK port 5000 (the
//! framed protocol) and port 5001 (the TCP forwarder).

use crate::conn::{is_transient_accept_error, serve_connection};
use crate::context::AgentContext;
use crate::AgentError;
use locale2b_protocol::{AGENT_VSOCK_PORT, FORWARD_VSOCK_PORT};
use std::path::Path;
use std::sync::Arc;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

/// Binds AF_VSOCK `port`; `Ok(None)` when the guest has no vsock device.
fn bind(port: u32) -> Result<Option<VsockListener>, AgentError> {
    if !Path::new("/dev/vsock").exists() {
        return Ok(None);
    }
    VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))
        .map(Some)
        .map_err(|source| AgentError::Bind {
            what: format!("vsock port {port}"),
            source,
        })
}

/// Binds AF_VSOCK [`AGENT_VSOCK_PORT`]; `Ok(None)` when the guest has no
/// vsock device.
///
/// # Errors
/// [`AgentError::Bind`].
pub fn bind_vsock() -> Result<Option<VsockListener>, AgentError> {
    bind(AGENT_VSOCK_PORT)
}

/// Binds AF_VSOCK [`FORWARD_VSOCK_PORT`]; `Ok(None)` without a vsock device.
///
/// # Errors
/// [`AgentError::Bind`].
pub fn bind_forward() -> Result<Option<VsockListener>, AgentError> {
    bind(FORWARD_VSOCK_PORT)
}

/// Serves every connection accepted on `listener` until shutdown.
///
/// # Errors
/// [`AgentError::Accept`] when accepting fails for good.
pub async fn serve_vsock(
    listener: VsockListener,
    ctx: Arc<AgentContext>,
) -> Result<(), AgentError> {
    let c = ctx.clone();
    accept_loop(listener, AGENT_VSOCK_PORT, ctx, move |stream| {
        tokio::spawn(serve_connection(stream, c.clone()));
    })
    .await
}

/// Serves every forwarding stream accepted on `listener` until shutdown.
///
/// # Errors
/// [`AgentError::Accept`] when accepting fails for good.
pub async fn serve_forward(
    listener: VsockListener,
    ctx: Arc<AgentContext>,
) -> Result<(), AgentError> {
    accept_loop(listener, FORWARD_VSOCK_PORT, ctx, |stream| {
        tokio::spawn(crate::forward::serve_forward(stream));
    })
    .await
}

async fn accept_loop(
    listener: VsockListener,
    port: u32,
    ctx: Arc<AgentContext>,
    serve: impl Fn(VsockStream),
) -> Result<(), AgentError> {
    let what = format!("vsock port {port}");
    tracing::info!(port, "listening on vsock");
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown_token().cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => serve(stream),
            Err(e) if is_transient_accept_error(&e) => {
                tracing::warn!(error = %e, "vsock accept failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(source) => return Err(AgentError::Accept { what, source }),
        }
    }
}
