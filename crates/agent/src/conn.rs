//! One connection: read frames, dispatch, answer; and the Unix listener.

use crate::context::AgentContext;
use crate::dispatch::{self, AfterReply};
use crate::AgentError;
use locale2b_protocol::frame::{read_frame, write_frame};
use locale2b_protocol::{ErrorBody, ErrorCode, FrameError, Outcome, ResponseFrame};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

/// Serves the framed protocol on one byte stream until the peer closes it,
/// it stays idle past the configured timeout, the framing breaks, or the
/// agent shuts down.
///
/// Requests on one connection are answered in order. Malformed payloads
/// are answered with an error frame (`malformed_frame`, `unknown_action`,
/// `invalid_request`) and the connection keeps serving; a header announcing
/// more than `max_frame` bytes is answered with `too_large` and the
/// connection is closed, since the stream cannot be resynchronised.
pub async fn serve_connection<S>(mut stream: S, ctx: Arc<AgentContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = ctx.config.max_frame;
    loop {
        let next = tokio::select! {
            () = ctx.shutdown_token().cancelled() => return,
            r = tokio::time::timeout(ctx.config.idle_timeout, read_frame(&mut stream, max)) => r,
        };
        let payload = match next {
            Err(_elapsed) => {
                tracing::debug!("closing idle connection");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(payload))) => payload,
            Ok(Err(FrameError::Empty)) => {
                let body = ErrorBody::new(ErrorCode::MalformedFrame, "frame with an empty payload");
                if reply(&mut stream, 0, Outcome::Error(body), max)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(Err(err @ FrameError::TooLarge { .. })) => {
                let body = ErrorBody::new(ErrorCode::TooLarge, err.to_string());
                let _ = reply(&mut stream, 0, Outcome::Error(body), max).await;
                tracing::warn!(error = %err, "oversize frame, closing connection");
                return;
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "connection ended");
                return;
            }
        };
        let (id, outcome, after) = dispatch::handle_payload(&payload, &ctx).await;
        drop(payload);
        if reply(&mut stream, id, outcome, max).await.is_err() {
            return;
        }
        if after == AfterReply::Shutdown {
            crate::system::shutdown_after_reply(&ctx);
            return;
        }
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    id: u64,
    outcome: Outcome,
    max: usize,
) -> Result<(), FrameError> {
    let frame = ResponseFrame { id, outcome };
    let payload = match serde_json::to_vec(&frame) {
        Ok(p) if p.len() <= max => p,
        Ok(p) => {
            let body = ErrorBody::new(
                ErrorCode::TooLarge,
                format!(
                    "answer of {} bytes exceeds the maximum frame of {max} bytes",
                    p.len()
                ),
            );
            too_small_payload(id, body)?
        }
        Err(e) => {
            let body = ErrorBody::new(ErrorCode::Internal, format!("cannot encode answer: {e}"));
            too_small_payload(id, body)?
        }
    };
    write_frame(stream, &payload, max).await
}

fn too_small_payload(id: u64, body: ErrorBody) -> Result<Vec<u8>, FrameError> {
    serde_json::to_vec(&ResponseFrame {
        id,
        outcome: Outcome::Error(body),
    })
    .map_err(FrameError::Json)
}

/// Listens on a Unix socket at `path` (an existing socket file is replaced)
/// and serves every connection concurrently until the agent shuts down
/// (a `shutdown` request, or [`AgentContext::request_shutdown`]).
///
/// # Errors
/// [`AgentError::Bind`] when the socket cannot be created,
/// [`AgentError::Accept`] when accepting fails for good.
pub async fn serve_unix(path: &Path, ctx: Arc<AgentContext>) -> Result<(), AgentError> {
    let what = path.display().to_string();
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(AgentError::Bind { what, source }),
    }
    let listener = UnixListener::bind(path).map_err(|source| AgentError::Bind {
        what: what.clone(),
        source,
    })?;
    tracing::info!(path = %what, "listening on unix socket");
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
                tracing::warn!(error = %e, "accept failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(source) => return Err(AgentError::Accept { what, source }),
        }
    }
}

/// Accept errors that concern one connection or a passing resource
/// shortage, not the listener.
pub(crate) fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
        )
    )
}
