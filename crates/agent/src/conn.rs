//! One connection: read frames, dispatch, answer; and the Unix listener.

use crate::context::AgentContext;
use crate::dispatch::{self, AfterReply};
use crate::AgentError;
use locale2b_protocol::frame::{read_any, write_frame, Frame};
use locale2b_protocol::{
    ErrorBody, ErrorCode, FrameError, Outcome, Request, ResponseFrame, PROTOCOL_VERSION,
};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

/// Serves the framed protocol on one byte stream until the peer closes it,
/// it stays idle past the configured timeout, the framing breaks, or the
/// agent shuts down.
///
/// Requests on one connection are answered in order. The connection speaks
/// protocol 1 until a `hello` agrees on a higher version (the lower of the
/// host's and this agent's); requests of a later version are refused with
/// `incompatible_version`. A streamed request (protocol 2) owns the
/// connection until its final frame. Malformed payloads are answered with
/// an error frame (`malformed_frame`, `unknown_action`, `invalid_request`)
/// and the connection keeps serving; a header announcing more than
/// `max_frame` bytes, or a data frame outside of a stream, is answered with
/// an error and the connection is closed, since the stream cannot be
/// resynchronised.
pub async fn serve_connection<S>(stream: S, ctx: Arc<AgentContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = ctx.config.max_frame;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut version: u32 = 1;
    loop {
        let next = tokio::select! {
            () = ctx.shutdown_token().cancelled() => return,
            r = tokio::time::timeout(ctx.config.idle_timeout, read_any(&mut rd, max)) => r,
        };
        let payload = match next {
            Err(_elapsed) => {
                tracing::debug!("closing idle connection");
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(Frame::Json(payload)))) => payload,
            Ok(Ok(Some(Frame::Data { .. }))) => {
                let body =
                    ErrorBody::new(ErrorCode::MalformedFrame, "data frame outside of a stream");
                let _ = reply(&mut wr, 0, Outcome::Error(body), max).await;
                return;
            }
            Ok(Err(FrameError::Empty)) => {
                let body = ErrorBody::new(ErrorCode::MalformedFrame, "frame with an empty payload");
                if reply(&mut wr, 0, Outcome::Error(body), max).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Err(err @ (FrameError::TooLarge { .. } | FrameError::UnknownChannel(_)))) => {
                let code = if matches!(err, FrameError::TooLarge { .. }) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::MalformedFrame
                };
                let body = ErrorBody::new(code, err.to_string());
                let _ = reply(&mut wr, 0, Outcome::Error(body), max).await;
                tracing::warn!(error = %err, "bad frame header, closing connection");
                return;
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "connection ended");
                return;
            }
        };
        let frame = match dispatch::parse(&payload) {
            Ok(frame) => frame,
            Err((id, body)) => {
                if reply(&mut wr, id, Outcome::Error(body), max).await.is_err() {
                    return;
                }
                continue;
            }
        };
        drop(payload);
        let id = frame.id;
        let needs = frame.request.since_version();
        if needs > version {
            let body = ErrorBody::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "{} needs protocol {needs}; this connection speaks {version} (send hello with protocol_version {needs} first)",
                    frame.request.action()
                ),
            );
            if reply(&mut wr, id, Outcome::Error(body), max).await.is_err() {
                return;
            }
            continue;
        }
        if frame.request.is_streamed() {
            if dispatch::stream(frame, &ctx, &mut wr, &mut rd)
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let hello_version = match &frame.request {
            Request::Hello(h) => Some(h.protocol_version),
            _ => None,
        };
        let (outcome, after) = dispatch::run(frame.request, &ctx).await;
        if let (Some(v), Outcome::Ok(_)) = (hello_version, &outcome) {
            version = v.min(PROTOCOL_VERSION);
        }
        // Answers carry only what this connection's version knows.
        let outcome = match outcome {
            Outcome::Ok(resp) => Outcome::Ok(resp.for_version(version)),
            other => other,
        };
        if reply(&mut wr, id, outcome, max).await.is_err() {
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
