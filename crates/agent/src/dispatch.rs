//! Parse a request payload and route it to its handler.

use crate::context::AgentContext;
use crate::{exec, fs, processes, system};
use locale2b_protocol::frame::parse_request;
use locale2b_protocol::{ErrorBody, ErrorCode, Outcome, Request, RequestFrame, Response};
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
    "process_start",
    "process_list",
    "process_status",
    "process_output",
    "process_input",
    "process_signal",
    "process_resize",
    "process_remove",
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

/// Parses a request payload; a payload that is not a valid request comes
/// back as the id to answer with and the error.
///
/// # Errors
/// `(id, error)` as [`classify_parse_error`] decides.
pub fn parse(payload: &[u8]) -> Result<RequestFrame, (u64, ErrorBody)> {
    parse_request(payload).map_err(|err| {
        let detail = match &err {
            locale2b_protocol::FrameError::Json(e) => e.to_string(),
            other => other.to_string(),
        };
        let (id, body) = classify_parse_error(payload, &detail);
        tracing::debug!(id, code = %body.code, "refused request frame");
        (id, body)
    })
}

/// Parses and runs one request payload (a unary request on a v1
/// connection). Never panics on bad input: a panic inside a handler is
/// caught and answered as `internal`.
pub async fn handle_payload(payload: &[u8], ctx: &Arc<AgentContext>) -> (u64, Outcome, AfterReply) {
    match parse(payload) {
        Ok(frame) => {
            let id = frame.id;
            let (outcome, after) = run(frame.request, ctx).await;
            (id, outcome, after)
        }
        Err((id, body)) => (id, Outcome::Error(body), AfterReply::Continue),
    }
}

/// Runs one unary request in its own task (a panic is answered as
/// `internal`) and logs its outcome.
pub async fn run(request: Request, ctx: &Arc<AgentContext>) -> (Outcome, AfterReply) {
    let action = request.action();
    let after = if matches!(request, Request::Shutdown) {
        AfterReply::Shutdown
    } else {
        AfterReply::Continue
    };
    let span_ctx = ctx.clone();
    let started = std::time::Instant::now();
    let outcome = match tokio::spawn(async move { handle(request, &span_ctx).await }).await {
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
        Outcome::Error(e) => tracing::debug!(
            sandbox_id,
            action,
            code = %e.code,
            message = %e.message,
            "request failed"
        ),
        _ => tracing::debug!(
            sandbox_id,
            action,
            ms = started.elapsed().as_millis() as u64,
            "request done"
        ),
    }
    let after = if matches!(outcome, Outcome::Ok(_)) {
        after
    } else {
        AfterReply::Continue
    };
    (outcome, after)
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
        Request::ProcessStart(req) => processes::start(ctx, &req)
            .await
            .map(|p| Response::Process(p.info())),
        Request::ProcessList => Ok(Response::Processes(locale2b_protocol::ProcessList {
            processes: ctx.processes.list(),
        })),
        Request::ProcessStatus(req) => ctx
            .processes
            .get(&req.process)
            .map(|p| Response::Process(p.info())),
        Request::ProcessInput(req) => processes::input(ctx, &req).await,
        Request::ProcessSignal(req) => ctx
            .processes
            .get(&req.process)?
            .signal(req.signal)
            .map(|()| Response::Done),
        Request::ProcessResize(req) => ctx
            .processes
            .get(&req.process)?
            .resize(req.size)
            .map(|()| Response::Done),
        Request::ProcessRemove(req) => ctx.processes.remove(&req.process).map(|()| Response::Done),
        // Streamed requests are run by `stream`; reaching here is a bug of
        // the connection loop.
        Request::ProcessOutput(_)
        | Request::WatchDir(_)
        | Request::ReadStream(_)
        | Request::WriteStream(_) => Err(ErrorBody::new(
            ErrorCode::Internal,
            "streamed requests are not answered here",
        )),
    }
}

/// Runs a streamed request (see [`Request::is_streamed`]), writing its
/// events, data frames and final frame on the connection.
///
/// # Errors
/// Frame write errors (the host went away).
pub async fn stream<W, R>(
    frame: RequestFrame,
    ctx: &Arc<AgentContext>,
    w: &mut W,
    r: &mut R,
) -> Result<(), locale2b_protocol::FrameError>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    use crate::process::stream::{send, stream_output};
    use locale2b_protocol::StreamEvent;
    let max = ctx.config.max_frame;
    let id = frame.id;
    match frame.request {
        Request::ProcessStart(req) => match processes::start(ctx, &req).await {
            Err(body) => send(w, id, Outcome::Error(body), max).await,
            Ok(proc) => {
                send(
                    w,
                    id,
                    Outcome::Event(StreamEvent::Started { pid: proc.pid }),
                    max,
                )
                .await?;
                let result = stream_output(&proc, id, 0, None, true, w, r, max).await;
                if proc.ephemeral {
                    ctx.processes.forget(proc.pid);
                }
                result
            }
        },
        Request::ProcessOutput(req) => match ctx.processes.get(&req.process) {
            Err(body) => send(w, id, Outcome::Error(body), max).await,
            Ok(proc) => {
                stream_output(&proc, id, req.cursor, req.max_bytes, req.follow, w, r, max).await
            }
        },
        Request::WatchDir(req) => crate::watch::stream(ctx, id, &req, w, r).await,
        Request::ReadStream(req) => crate::filestream::read_stream(ctx, id, req, w, r).await,
        Request::WriteStream(req) => crate::filestream::write_stream(ctx, id, req, w, r).await,
        other => {
            let body = ErrorBody::new(
                ErrorCode::Internal,
                format!("{} is not a streamed request", other.action()),
            );
            send(w, id, Outcome::Error(body), max).await
        }
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
                owner: None,
                in_place: false,
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
                owner: None,
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
                process_retention_sec: None,
                network: None,
            }),
            Request::Sync,
            Request::Shutdown,
            Request::ProcessStart(ProcessStartRequest::default()),
            Request::ProcessList,
            Request::ProcessStatus(ProcessRequest {
                process: ProcessSelector::Pid(1),
            }),
            Request::ProcessOutput(ProcessOutputRequest {
                process: ProcessSelector::Pid(1),
                cursor: 0,
                max_bytes: None,
                follow: false,
            }),
            Request::ProcessInput(ProcessInputRequest {
                process: ProcessSelector::Pid(1),
                data_b64: String::new(),
                close: false,
            }),
            Request::ProcessSignal(ProcessSignalRequest {
                process: ProcessSelector::Pid(1),
                signal: 15,
            }),
            Request::ProcessResize(ProcessResizeRequest {
                process: ProcessSelector::Pid(1),
                size: PtySize { rows: 1, cols: 1 },
            }),
            Request::ProcessRemove(ProcessRequest {
                process: ProcessSelector::Pid(1),
            }),
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
