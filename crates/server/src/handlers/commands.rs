//! `POST /sandboxes/{id}/exec`.

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiPath};
use crate::models::*;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_manager::ExecSpec;
use locale2b_protocol::SandboxId;
use std::time::Duration;

/// Runs a command with `/bin/sh -c` and waits for it.
#[utoipa::path(post, path = "/sandboxes/{id}/exec", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (any exit code) or timed out (`timed_out`, `error`); with `stream`, NDJSON lines (`StreamLine`) as the output comes", body = ExecResult),
        (status = 400, description = "Invalid request (also: the working directory or user does not exist)", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Sandbox not running", body = ErrorResponse),
        (status = 504, description = "No answer from the guest in time", body = ErrorResponse),
    ))]
pub async fn exec(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ApiError> {
    let timeout = match (body.timeout_ms, body.timeout_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either timeout_ms or timeout_seconds, not both",
            ))
        }
        (Some(ms), None) => Some(Duration::from_millis(ms)),
        (None, Some(secs)) => Some(Duration::from_secs(secs)),
        (None, None) => None,
    };
    let stdin = match (body.stdin, body.stdin_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either stdin or stdin_b64, not both",
            ))
        }
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(b64)) => Some(B64.decode(&b64).map_err(|e| ApiError::BadRequest {
            code: "invalid_encoding",
            message: format!("stdin_b64 is not valid base64: {e}"),
        })?),
        (None, None) => None,
    };
    let spec = ExecSpec {
        command: body.command,
        working_dir: body.working_dir,
        env: body.env,
        stdin,
        timeout,
        user: body.user,
        max_output_bytes: body.max_output_bytes,
    };
    let guest = s.sandboxes().guest(&id);
    if body.stream {
        let events = guest.exec_stream(spec).await?;
        return Ok(super::processes::ndjson(events, Encoding::Utf8));
    }
    let out = guest.exec(spec).await?;
    Ok(Json(ExecResult {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
        error: out.error,
        timed_out: out.timed_out,
        truncated: out.truncated,
        duration_ms: out.duration_ms,
        signal: out.signal,
    })
    .into_response())
}
