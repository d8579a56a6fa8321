//! Background processes: start, list, status, output by cursor, live
//! output (NDJSON), stdin, signals, PTY resize, removal, and a PTY over a
//! WebSocket.

use super::ApiResult;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::models::*;
use crate::AppState;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use locale2b_manager::{
    GuestOps, ManagerError, OutputEvent, OutputEvents, ProcessSelector, ProcessSpec, PtySize,
};
use locale2b_protocol::SandboxId;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The `{pid}` path segment: a number is a pid, anything else a tag.
fn selector(raw: &str) -> Result<ProcessSelector, ApiError> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u32>()
            .map(ProcessSelector::Pid)
            .map_err(|_| ApiError::invalid(format!("process id {raw} is out of range")));
    }
    locale2b_protocol::validate_tag(raw).map_err(ApiError::invalid)?;
    Ok(ProcessSelector::Tag(raw.to_owned()))
}

/// The pid a selector names (a tag is looked up).
async fn pid_of(guest: &dyn GuestOps, sel: &ProcessSelector) -> Result<u32, ApiError> {
    match sel {
        ProcessSelector::Pid(p) => Ok(*p),
        ProcessSelector::Tag(_) => Ok(guest.process(sel).await?.pid),
    }
}

/// Starts a background process and answers at once with its id.
#[utoipa::path(post, path = "/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = StartProcessBody,
    responses(
        (status = 201, description = "Started", body = ProcessResponse),
        (status = 400, description = "Invalid command, directory, user, tag, size or environment", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Sandbox not running, or the tag is taken by a running process", body = ErrorResponse),
        (status = 501, description = "The sandbox's guest image is too old for processes", body = ErrorResponse),
    ))]
pub async fn start_process(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<StartProcessBody>,
) -> Result<(StatusCode, Json<ProcessResponse>), ApiError> {
    let spec = ProcessSpec {
        command: body.command,
        argv: body.argv,
        cwd: body.cwd,
        env: body.env,
        user: body.user,
        pty: body.pty.map(|p| PtySize {
            rows: p.rows,
            cols: p.cols,
        }),
        tag: body.tag,
        stdin: body.stdin,
        timeout: body.timeout_ms.map(Duration::from_millis),
        buffer_bytes: body.buffer_bytes,
    };
    let info = s.sandboxes().guest(&id).start_process(spec).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Lists the sandbox's processes (running ones and exited ones still kept).
#[utoipa::path(get, path = "/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The processes", body = ProcessListResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ))]
pub async fn list_processes(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<ProcessListResponse> {
    let processes = s.sandboxes().guest(&id).list_processes().await?;
    Ok(Json(ProcessListResponse {
        processes: processes.into_iter().map(Into::into).collect(),
    }))
}

/// Describes one process (status, exit code, output cursors).
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag")),
    responses(
        (status = 200, description = "The process", body = ProcessResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
    ))]
pub async fn get_process(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
) -> ApiResult<ProcessResponse> {
    let sel = selector(&pid)?;
    Ok(Json(s.sandboxes().guest(&id).process(&sel).await?.into()))
}

/// Kills a process (its whole group) if it runs, and forgets it.
#[utoipa::path(delete, path = "/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag")),
    responses(
        (status = 200, description = "Removed", body = ProcessActionResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
    ))]
pub async fn remove_process(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
) -> ApiResult<ProcessActionResponse> {
    let sel = selector(&pid)?;
    let guest = s.sandboxes().guest(&id);
    let info = guest.process(&sel).await?;
    guest
        .remove_process(&ProcessSelector::Pid(info.pid))
        .await?;
    Ok(Json(ProcessActionResponse {
        pid: info.pid,
        result: "removed".into(),
    }))
}

/// Output since a cursor, without waiting: the bytes, the next cursor, and
/// how many bytes before it the buffer no longer held.
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/output", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag"), OutputQuery),
    responses(
        (status = 200, description = "Output", body = OutputResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
    ))]
pub async fn process_output(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> ApiResult<OutputResponse> {
    let sel = selector(&pid)?;
    let encoding = q.encoding.unwrap_or(Encoding::Utf8);
    let out = s
        .sandboxes()
        .guest(&id)
        .read_output(&sel, q.cursor.unwrap_or(0), q.max_bytes)
        .await?;
    Ok(Json(OutputResponse::new(out, encoding)))
}

/// A live stream of events as NDJSON: one [`StreamLine`] per line.
pub(crate) fn ndjson(events: OutputEvents, encoding: Encoding) -> Response {
    let lines = events.map(move |item| {
        let line = match item {
            Ok(e) => StreamLine::from_event(e, encoding),
            Err(e) => {
                let api = ApiError::from(e);
                let (_, code, message) = api.status_code_message();
                StreamLine::Error { code, message }
            }
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes)
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Output from a cursor as it is produced, until the process ended, as
/// NDJSON (`stdout`/`stderr`/`pty` lines with `cursor` and `data`,
/// `dropped`, `keepalive`, then `end`).
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/stream", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag"), OutputQuery),
    responses(
        (status = 200, description = "NDJSON lines until the process ended", body = StreamLine, content_type = "application/x-ndjson"),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
    ))]
pub async fn process_stream(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> Result<Response, ApiError> {
    let sel = selector(&pid)?;
    let events = s
        .sandboxes()
        .guest(&id)
        .follow_output(&sel, q.cursor.unwrap_or(0))
        .await?;
    Ok(ndjson(events, q.encoding.unwrap_or(Encoding::Utf8)))
}

/// Writes to a process's stdin (or its PTY); `close` closes stdin after.
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag")),
    request_body = StdinBody,
    responses(
        (status = 200, description = "Written", body = StdinResponse),
        (status = 400, description = "Both or neither of data/data_b64 and no close, or bad base64", body = ErrorResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
        (status = 409, description = "Stdin is closed, or the process exited", body = ErrorResponse),
        (status = 413, description = "More than 1 MiB in one write", body = ErrorResponse),
    ))]
pub async fn process_stdin(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiJson(body): ApiJson<StdinBody>,
) -> ApiResult<StdinResponse> {
    let sel = selector(&pid)?;
    let data = match (body.data, body.data_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give either data or data_b64, not both"))
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => B64.decode(&b64).map_err(|e| ApiError::BadRequest {
            code: "invalid_encoding",
            message: format!("data_b64 is not valid base64: {e}"),
        })?,
        (None, None) if body.close => Vec::new(),
        (None, None) => {
            return Err(ApiError::invalid(
                "give data (text) or data_b64 (bytes), or close: true",
            ))
        }
    };
    let written = data.len() as u64;
    let guest = s.sandboxes().guest(&id);
    let pid = pid_of(guest.as_ref(), &sel).await?;
    guest
        .write_stdin(&ProcessSelector::Pid(pid), data, body.close)
        .await?;
    Ok(Json(StdinResponse {
        pid,
        written,
        closed: body.close,
    }))
}

/// Sends a signal to a process's whole group.
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag")),
    request_body = SignalBody,
    responses(
        (status = 200, description = "Sent", body = ProcessActionResponse),
        (status = 400, description = "Unknown signal", body = ErrorResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
        (status = 409, description = "The process exited", body = ErrorResponse),
    ))]
pub async fn process_signal(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiJson(body): ApiJson<SignalBody>,
) -> ApiResult<ProcessActionResponse> {
    let sel = selector(&pid)?;
    let signal = match &body.signal {
        serde_json::Value::String(name) => locale2b_protocol::parse_signal(name),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(|n| locale2b_protocol::parse_signal(&n.to_string()))
            .unwrap_or_else(|| Err(format!("signal {n} is out of range 1-64"))),
        other => Err(format!(
            "signal must be a name like \"SIGTERM\" or a number, not {other}"
        )),
    }
    .map_err(ApiError::invalid)?;
    let guest = s.sandboxes().guest(&id);
    let pid = pid_of(guest.as_ref(), &sel).await?;
    guest.signal(&ProcessSelector::Pid(pid), signal).await?;
    Ok(Json(ProcessActionResponse {
        pid,
        result: "signalled".into(),
    }))
}

/// Resizes a process's PTY.
#[utoipa::path(post, path = "/sandboxes/{id}/processes/{pid}/resize", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag")),
    request_body = PtySizeBody,
    responses(
        (status = 200, description = "Resized", body = ProcessActionResponse),
        (status = 400, description = "No PTY, or a size out of range", body = ErrorResponse),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
        (status = 409, description = "The process exited", body = ErrorResponse),
    ))]
pub async fn process_resize(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiJson(body): ApiJson<PtySizeBody>,
) -> ApiResult<ProcessActionResponse> {
    let sel = selector(&pid)?;
    let size = PtySize {
        rows: body.rows,
        cols: body.cols,
    };
    let guest = s.sandboxes().guest(&id);
    let pid = pid_of(guest.as_ref(), &sel).await?;
    guest.resize(&ProcessSelector::Pid(pid), size).await?;
    Ok(Json(ProcessActionResponse {
        pid,
        result: "resized".into(),
    }))
}

/// Query of the PTY WebSocket.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PtyQuery {
    /// Cursor to replay output from (default 0: everything still held).
    pub cursor: Option<u64>,
}

/// A control message from the WebSocket client (text frames).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum PtyControl {
    Resize { rows: u16, cols: u16 },
    Input { data: String },
    Signal { signal: String },
}

/// A PTY (or any process) over a WebSocket: binary frames carry bytes both
/// ways (output from the process, keystrokes to it); text frames from the
/// client carry JSON controls (`{"type":"resize","rows","cols"}`,
/// `{"type":"input","data"}`, `{"type":"signal","signal"}`); the server ends
/// with a text frame `{"type":"exit",...}` and closes.
#[utoipa::path(get, path = "/sandboxes/{id}/processes/{pid}/pty", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Process id, or its tag"), PtyQuery),
    responses(
        (status = 101, description = "WebSocket upgrade"),
        (status = 404, description = "No such sandbox or process", body = ErrorResponse),
    ))]
pub async fn process_pty(
    State(s): State<AppState>,
    ApiPath((id, pid)): ApiPath<(SandboxId, String)>,
    ApiQuery(q): ApiQuery<PtyQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let sel = selector(&pid)?;
    let guest = s.sandboxes().guest(&id);
    let info = guest.process(&sel).await?;
    let sel = ProcessSelector::Pid(info.pid);
    let events = guest.follow_output(&sel, q.cursor.unwrap_or(0)).await?;
    Ok(ws.on_upgrade(move |socket| pty_session(socket, guest, sel, events)))
}

async fn pty_session(
    socket: WebSocket,
    guest: Arc<dyn GuestOps>,
    sel: ProcessSelector,
    mut events: OutputEvents,
) {
    let (mut tx, mut rx) = socket.split();
    let text = |v: serde_json::Value| Message::Text(v.to_string().into());
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(OutputEvent::Data(c))) => {
                    if tx.send(Message::Binary(c.data.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(OutputEvent::Dropped { bytes, cursor })) => {
                    let _ = tx.send(text(serde_json::json!({"type": "dropped", "bytes": bytes, "cursor": cursor}))).await;
                }
                Some(Ok(OutputEvent::End { exit, next_cursor })) => {
                    let exit = exit.unwrap_or(locale2b_protocol::ProcessExit {
                        exit_code: None, signal: None, timed_out: false, duration_ms: 0,
                    });
                    let _ = tx.send(text(serde_json::json!({
                        "type": "exit", "exit_code": exit.exit_code, "signal": exit.signal,
                        "timed_out": exit.timed_out, "next_cursor": next_cursor,
                    }))).await;
                    let _ = tx.close().await;
                    return;
                }
                Some(Ok(OutputEvent::Started { .. } | OutputEvent::Keepalive)) => {}
                Some(Err(e)) => {
                    let (_, code, message) = ApiError::from(e).status_code_message();
                    let _ = tx.send(text(serde_json::json!({"type": "error", "code": code, "message": message}))).await;
                    let _ = tx.close().await;
                    return;
                }
                None => {
                    let _ = tx.close().await;
                    return;
                }
            },
            msg = rx.next() => {
                let result = match msg {
                    Some(Ok(Message::Binary(data))) => guest.write_stdin(&sel, data.to_vec(), false).await,
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<PtyControl>(&t) {
                        Ok(PtyControl::Resize { rows, cols }) => guest.resize(&sel, PtySize { rows, cols }).await,
                        Ok(PtyControl::Input { data }) => guest.write_stdin(&sel, data.into_bytes(), false).await,
                        Ok(PtyControl::Signal { signal }) => match locale2b_protocol::parse_signal(&signal) {
                            Ok(n) => guest.signal(&sel, n).await,
                            Err(m) => Err(ManagerError::InvalidInput(m)),
                        },
                        Err(e) => Err(ManagerError::InvalidInput(format!(
                            "control message not understood ({e}); send {{\"type\":\"resize\",\"rows\":N,\"cols\":N}}, {{\"type\":\"input\",\"data\":\"...\"}} or {{\"type\":\"signal\",\"signal\":\"SIGINT\"}}"
                        ))),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => Ok(()),
                };
                if let Err(e) = result {
                    let (_, code, message) = ApiError::from(e).status_code_message();
                    if tx.send(text(serde_json::json!({"type": "error", "code": code, "message": message}))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pid_or_tag() {
        assert_eq!(selector("42").unwrap(), ProcessSelector::Pid(42));
        assert_eq!(
            selector("shell-1").unwrap(),
            ProcessSelector::Tag("shell-1".into())
        );
        assert!(selector("99999999999").is_err());
        assert!(selector("-x").is_err());
    }
}
