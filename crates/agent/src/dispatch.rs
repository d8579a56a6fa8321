//! Parse a request payload and route it to its handler.

use crate::context::AgentContext;
use crate::{exec, fs, system};
use locale2b_protocol::frame::parse_request;
use locale2b_protocol::{ErrorBody, ErrorCode, Outcome, Request, Response};
use serde::Deserialize;
use std::sync::Arc;

/// Wire names of every action this agent implements (kept equal to
/// [`Request::action`] by a unit test).
pub const KNOWN_ACTIONS: &[&str] = &[
    "hello",
    "ping",
    "exec",
    "read_file",
    "write_file",
    "list_files",
    "mkdir",
    "stat",
    "delete_file",
    "rename",
    "init",
    "sync",
    "shutdown",
];

/// What the connection must do once the answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Keep serving.
    Continue,
    /// Stop the agent (power off when PID 1).
    Shutdown,
}

/// Only what is needed to answer a frame that is not a valid request.
#[derive(Deserialize)]
struct LooseFrame {
    id: Option<u64>,
    request: Option<LooseRequest>,
}

#[derive(Deserialize)]
struct LooseRequest {
    action: Option<String>,
}

/// Classifies a payload that failed to parse as a request: the id to answer
/// with (0 when unknown) and the error.
pub fn classify_parse_error(payload: &[u8], err: &dyn std::fmt::Display) -> (u64, ErrorBody) {
    let Ok(loose) = serde_json::from_slice::<LooseFrame>(payload) else {
        return (
            0,
            ErrorBody::new(
                ErrorCode::MalformedFrame,
                format!("not a request frame: {err}"),
            ),
        );
    };
    let id = loose.id.unwrap_or(0);
    let Some(action) = loose.request.and_then(|r| r.action) else {
        return (
            id,
            ErrorBody::new(
                ErrorCode::MalformedFrame,
                format!("not a request frame: {err}"),
            ),
        );
    };
    if loose.id.is_none() {
        return (
            0,
            ErrorBody::new(ErrorCode::MalformedFrame, "request frame without an id"),
        );
    }
    if !KNOWN_ACTIONS.contains(&action.as_str()) {
        let shown: String = action.chars().take(64).collect();
        return (
            id,
            ErrorBody::new(
                ErrorCode::UnknownAction,
                format!("unknown action {shown:?}"),
            ),
        );
    }
    (
        id,
        ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!("invalid {action} request: {err}"),
        ),
    )
}

/// Parses and runs one request payload. Never panics on bad input: a panic
/// inside a handler is caught and answered as `internal`.
pub async fn handle_payload(payload: &[u8], ctx: &Arc<AgentContext>) -> (u64, Outcome, AfterReply) {
    let frame = match parse_request(payload) {
        Ok(frame) => frame,
        Err(err) => {
            let detail = match &err {
                locale2b_protocol::FrameError::Json(e) => e.to_string(),
                other => other.to_string(),
            };
            let (id, body) = classify_parse_error(payload, &detail);
            tracing::debug!(id, code = %body.code, "refused request frame");
            return (id, Outcome::Error(body), AfterReply::Continue);
        }
    };
    let id = frame.id;
    let action = frame.request.action();
    let after = if matches!(frame.request, Request::Shutdown) {
        AfterReply::Shutdown
    } else {
        AfterReply::Continue
    };
    let span_ctx = ctx.clone();
    let started = std::time::Instant::now();
    let outcome = match tokio::spawn(async move { handle(frame.request, &span_ctx).await }).await {
        Ok(Ok(resp)) => Outcome::Ok(resp),
        Ok(Err(body)) => Outcome::Error(body),
        Err(join) => {
            tracing::error!(action, error = %join, "handler failed");
            Outcome::Error(ErrorBody::new(
                ErrorCode::Internal,
                format!("{action} handler failed"),
            ))
        }
    };
    let sandbox_id = ctx.state().sandbox_id.unwrap_or_default();
    match &outcome {
        Outcome::Ok(_) => tracing::debug!(
            sandbox_id,
            id,
            action,
            ms = started.elapsed().as_millis() as u64,
            "request done"
        ),
        Outcome::Error(e) => tracing::debug!(
            sandbox_id,
            id,
            action,
            code = %e.code,
            message = %e.message,
            "request failed"
        ),
    }
    let after = if matches!(outcome, Outcome::Ok(_)) {
        after
    } else {
        AfterReply::Continue
    };
    (id, outcome, after)
}

/// Runs one typed request.
///
/// # Errors
/// The [`ErrorBody`] to send back.
pub async fn handle(request: Request, ctx: &Arc<AgentContext>) -> Result<Response, ErrorBody> {
    match request {
        Request::Hello(req) => system::hello(&req),
        Request::Ping => Ok(system::ping(ctx)),
        Request::Exec(req) => exec::exec(ctx, req).await.map(Response::Exec),
        Request::ReadFile(req) => fs::blocking(ctx, move |c| fs::read_file(&c, &req)).await,
        Request::WriteFile(req) => fs::blocking(ctx, move |c| fs::write_file(&c, &req)).await,
        Request::ListFiles(req) => fs::blocking(ctx, move |c| fs::list_files(&c, &req)).await,
        Request::Mkdir(req) => fs::blocking(ctx, move |c| fs::mkdir(&c, &req)).await,
        Request::Stat(req) => fs::blocking(ctx, move |c| fs::stat(&c, &req)).await,
        Request::DeleteFile(req) => fs::blocking(ctx, move |c| fs::delete_file(&c, &req)).await,
        Request::Rename(req) => fs::blocking(ctx, move |c| fs::rename(&c, &req)).await,
        Request::Init(req) => system::init(ctx, req).await,
        Request::Sync => system::sync().await,
        Request::Shutdown => Ok(Response::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locale2b_protocol::*;

    #[test]
    fn known_actions_match_the_protocol() {
        let all = [
            Request::Hello(HelloRequest {
                protocol_version: 1,
                client: String::new(),
            }),
            Request::Ping,
            Request::Exec(ExecRequest {
                command: String::new(),
                working_dir: None,
                env: Default::default(),
                stdin_b64: None,
                timeout_ms: None,
                user: None,
                max_output_bytes: None,
            }),
            Request::ReadFile(ReadFileRequest {
                path: String::new(),
                offset: 0,
                length: None,
            }),
            Request::WriteFile(WriteFileRequest {
                path: String::new(),
                content: String::new(),
                encoding: ContentEncoding::Base64,
                mode: None,
                create_parents: false,
                append: false,
            }),
            Request::ListFiles(ListFilesRequest {
                path: String::new(),
                recursive: false,
                max_depth: None,
                max_entries: None,
            }),
            Request::Mkdir(MkdirRequest {
                path: String::new(),
                parents: false,
                mode: None,
            }),
            Request::Stat(PathRequest {
                path: String::new(),
            }),
            Request::DeleteFile(DeleteFileRequest {
                path: String::new(),
                recursive: false,
            }),
            Request::Rename(RenameRequest {
                from: String::new(),
                to: String::new(),
            }),
            Request::Init(InitRequest {
                sandbox_id: String::new(),
                workspace_id: None,
                hostname: None,
                unix_time_ms: None,
                env: Default::default(),
                entropy_b64: None,
            }),
            Request::Sync,
            Request::Shutdown,
        ];
        assert_eq!(all.len(), KNOWN_ACTIONS.len());
        for r in &all {
            assert!(KNOWN_ACTIONS.contains(&r.action()), "{}", r.action());
        }
    }

    #[test]
    fn parse_errors_are_classified() {
        let (id, e) = classify_parse_error(b"{not json", &"x");
        assert_eq!((id, e.code), (0, ErrorCode::MalformedFrame));
        let (id, e) = classify_parse_error(br#"{"id":7,"request":{"action":"fly"}}"#, &"x");
        assert_eq!((id, e.code), (7, ErrorCode::UnknownAction));
        let (id, e) = classify_parse_error(br#"{"id":8,"request":{"action":"exec"}}"#, &"x");
        assert_eq!((id, e.code), (8, ErrorCode::InvalidRequest));
        let (id, e) = classify_parse_error(br#"[1,2]"#, &"x");
        assert_eq!((id, e.code), (0, ErrorCode::MalformedFrame));
        let (id, e) = classify_parse_error(br#"{"request":{"action":"ping"}}"#, &"x");
        assert_eq!((id, e.code), (0, ErrorCode::MalformedFrame));
    }
}
