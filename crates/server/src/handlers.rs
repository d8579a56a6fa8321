//! Route handlers: each one turns an HTTP request into one call on the
//! [`SandboxManager`](locale2b_manager::SandboxManager) and its answer into
//! a response body. Status codes are chosen only in
//! [`ApiError`](crate::ApiError)'s `IntoResponse`.

use crate::error::{ApiError, ErrorResponse};
use crate::models::*;
use crate::AppState;
use axum::extract::{FromRequest, FromRequestParts, Multipart, State};
use axum::http::{Method, Uri};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_manager::{CreateSandbox, ManagerError};
use locale2b_protocol::{
    ContentEncoding, DeleteFileRequest, ExecRequest, ListFilesRequest, MkdirRequest,
    ReadFileRequest, SandboxId, WorkspaceId, WriteFileRequest,
};
use std::future::Future;
use std::time::Duration;

/// `axum::Json` whose rejections come out as [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejections come out as [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` whose rejections come out as [`ApiError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Multipart` whose rejections come out as [`ApiError`].
#[derive(Debug)]
pub struct ApiMultipart(pub Multipart);

impl<S: Send + Sync> FromRequest<S> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Multipart::from_request(req, state)
            .await
            .map(Self)
            .map_err(ApiError::from)
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Extra time the HTTP layer gives an exec beyond the command's own timeout
/// before answering 504 itself.
pub const EXEC_DEADLINE_MARGIN: Duration = Duration::from_secs(15);

/// Size of each write while streaming an upload into the guest.
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

fn sandbox_id(raw: String) -> Result<SandboxId, ApiError> {
    SandboxId::try_from(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

fn workspace_id(raw: String) -> Result<WorkspaceId, ApiError> {
    WorkspaceId::try_from(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

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

/// Service health and capacity. Never requires a key.
#[utoipa::path(get, path = "/health", tag = "health", security(()),
    responses((status = 200, description = "Health and capacity", body = HealthResponse)))]
pub async fn health(State(s): State<AppState>) -> Json<HealthResponse> {
    let cap = s.manager().capacity().await;
    Json(HealthResponse::from_capacity(
        cap,
        s.manager().config().default_memory_mb,
    ))
}

/// Creates a sandbox (boots a VM), or resumes the workspace named by
/// `workspace_id` when it exists and is paused.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxBody,
    responses(
        (status = 200, description = "Sandbox running", body = SandboxResponse),
        (status = 400, description = "Invalid sizes, template or workspace id", body = ErrorResponse),
        (status = 409, description = "The workspace already runs in another sandbox", body = ErrorResponse),
        (status = 502, description = "The VM failed to start", body = ErrorResponse),
        (status = 503, description = "At capacity (Retry-After header)", body = ErrorResponse),
        (status = 504, description = "The guest agent did not come up in time", body = ErrorResponse),
    ))]
pub async fn create_sandbox(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateSandboxBody>,
) -> ApiResult<SandboxResponse> {
    // Sizes and the template are validated by the manager (400 with the allowed range).
    let req = CreateSandbox {
        memory_mb: body.memory_mb,
        vcpu_count: body.vcpu_count,
        template: body.template,
        workspace_id: body.workspace_id.map(workspace_id).transpose()?,
        env: body.env,
    };
    let m = s.manager().clone();
    let info = detached(async move { m.create(req).await }).await?;
    Ok(Json(info.into()))
}

/// Lists all sandboxes.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "All sandboxes", body = SandboxList)))]
pub async fn list_sandboxes(State(s): State<AppState>) -> Json<SandboxList> {
    let sandboxes = s
        .manager()
        .list()
        .await
        .into_iter()
        .map(Into::into)
        .collect();
    Json(SandboxList { sandboxes })
}

/// Describes one sandbox.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ))]
pub async fn get_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SandboxResponse> {
    let id = sandbox_id(id)?;
    Ok(Json(s.manager().get(&id).await?.into()))
}

/// Destroys a sandbox (its workspace's data is kept). 404 means it is
/// already gone; callers may treat that as success.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Destroyed", body = DestroyedResponse),
        (status = 404, description = "No such sandbox (already gone)", body = ErrorResponse),
    ))]
pub async fn destroy_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<DestroyedResponse> {
    let id = sandbox_id(id)?;
    let m = s.manager().clone();
    let id2 = id.clone();
    detached(async move { m.destroy(&id2).await }).await?;
    Ok(Json(DestroyedResponse {
        sandbox_id: id.into(),
        status: "destroyed".into(),
    }))
}

/// Pauses a sandbox to a snapshot (frees its RAM).
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Paused (or already paused)", body = SandboxResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Not in a pausable state", body = ErrorResponse),
    ))]
pub async fn pause_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SandboxResponse> {
    let id = sandbox_id(id)?;
    let m = s.manager().clone();
    Ok(Json(
        detached(async move { m.pause(&id).await }).await?.into(),
    ))
}

/// Resumes a paused sandbox.
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Running (or already running)", body = SandboxResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Not in a resumable state", body = ErrorResponse),
        (status = 502, description = "Restore failed; the sandbox stays paused", body = ErrorResponse),
    ))]
pub async fn resume_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SandboxResponse> {
    let id = sandbox_id(id)?;
    let m = s.manager().clone();
    Ok(Json(
        detached(async move { m.resume(&id).await }).await?.into(),
    ))
}

/// Runs a command with `/bin/sh -c` and waits for it.
#[utoipa::path(post, path = "/sandboxes/{id}/exec", tag = "commands",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (any exit code) or timed out (`timed_out`, `error`)", body = ExecResult),
        (status = 400, description = "Invalid request", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Sandbox not running", body = ErrorResponse),
        (status = 504, description = "No answer from the guest in time", body = ErrorResponse),
    ))]
pub async fn exec(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<ExecResult> {
    let id = sandbox_id(id)?;
    if body.command.trim().is_empty() {
        return Err(ApiError::invalid("command must not be empty"));
    }
    let timeout_ms = match (body.timeout_ms, body.timeout_seconds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either timeout_ms or timeout_seconds, not both",
            ))
        }
        (Some(ms), None) => ms,
        (None, Some(secs)) => secs.saturating_mul(1000),
        (None, None) => s.manager().config().exec_timeout_sec.saturating_mul(1000),
    };
    if timeout_ms == 0 {
        return Err(ApiError::invalid("the timeout must be positive"));
    }
    let max_ms = s
        .manager()
        .config()
        .max_exec_timeout_sec
        .saturating_mul(1000);
    if timeout_ms > max_ms {
        return Err(ApiError::invalid(format!(
            "timeout of {timeout_ms} ms exceeds the server's maximum of {max_ms} ms (max_exec_timeout_sec)"
        )));
    }
    let stdin_b64 = match (body.stdin, body.stdin_b64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either stdin or stdin_b64, not both",
            ))
        }
        (Some(text), None) => Some(B64.encode(text.as_bytes())),
        (None, Some(b64)) => {
            B64.decode(&b64).map_err(|e| ApiError::BadRequest {
                code: "invalid_encoding",
                message: format!("stdin_b64 is not valid base64: {e}"),
            })?;
            Some(b64)
        }
        (None, None) => None,
    };
    let req = ExecRequest {
        command: body.command,
        working_dir: Some(body.working_dir.unwrap_or_else(|| "/workspace".into())),
        env: body.env,
        stdin_b64,
        timeout_ms: Some(timeout_ms),
        user: body.user,
        max_output_bytes: body.max_output_bytes,
    };
    let max_ms = s
        .manager()
        .config()
        .max_exec_timeout_sec
        .saturating_mul(1000);
    let deadline = Duration::from_millis(timeout_ms.min(max_ms)) + EXEC_DEADLINE_MARGIN;
    let out = tokio::time::timeout(deadline, s.manager().exec(&id, req))
        .await
        .map_err(|_| ApiError::Deadline {
            what: "exec".into(),
            after: deadline,
        })??;
    let error = if out.timed_out {
        Some(format!("command timed out after {timeout_ms} ms"))
    } else {
        out.signal
            .map(|sig| format!("command killed by signal {sig}"))
    };
    Ok(Json(ExecResult {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
        error,
        timed_out: out.timed_out,
        truncated: out.truncated,
        duration_ms: out.duration_ms,
        signal: out.signal,
    }))
}

/// Writes a whole file (atomic replace). `content` is base64 unless
/// `encoding` is `utf-8`.
#[utoipa::path(post, path = "/sandboxes/{id}/files/write", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = WriteFileBody,
    responses(
        (status = 200, description = "Written", body = WrittenFile),
        (status = 400, description = "Invalid request, e.g. content that is not base64 without `encoding: utf-8`", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
    ))]
pub async fn write_file(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<WriteFileBody>,
) -> ApiResult<WrittenFile> {
    let id = sandbox_id(id)?;
    if body.path.is_empty() {
        return Err(ApiError::invalid("path must not be empty"));
    }
    let encoding = match body.encoding {
        Encoding::Base64 => {
            if let Err(e) = B64.decode(&body.content) {
                return Err(ApiError::BadRequest {
                    code: "invalid_encoding",
                    message: format!(
                        "content is not valid base64 ({e}): send the file's bytes base64-encoded, \
                         or add \"encoding\": \"utf-8\" to send plain text"
                    ),
                });
            }
            ContentEncoding::Base64
        }
        Encoding::Utf8 => ContentEncoding::Utf8,
    };
    let written = s
        .manager()
        .write_file(
            &id,
            WriteFileRequest {
                path: body.path,
                content: body.content,
                encoding,
                mode: body.mode,
                create_parents: body.create_parents,
                append: false,
            },
        )
        .await?;
    Ok(Json(WrittenFile {
        path: written.path,
        size: written.size,
    }))
}

/// Reads (part of) a file; `content` is base64 unless `encoding=utf-8`.
#[utoipa::path(get, path = "/sandboxes/{id}/files/read", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ReadQuery),
    responses(
        (status = 200, description = "File content", body = FileContentResponse),
        (status = 400, description = "Invalid request, or `encoding=utf-8` for content that is not UTF-8", body = ErrorResponse),
        (status = 404, description = "No such sandbox or file", body = ErrorResponse),
        (status = 413, description = "The file does not fit in one response; read it in parts with offset/length", body = ErrorResponse),
    ))]
pub async fn read_file(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult<FileContentResponse> {
    let id = sandbox_id(id)?;
    let encoding = q.encoding.unwrap_or_default();
    let got = s
        .manager()
        .read_file(
            &id,
            ReadFileRequest {
                path: q.path.clone(),
                offset: q.offset.unwrap_or(0),
                length: q.length,
            },
        )
        .await?;
    let content = match encoding {
        Encoding::Base64 => got.content_b64,
        Encoding::Utf8 => {
            let bytes = B64.decode(&got.content_b64).map_err(|e| {
                ApiError::from(ManagerError::Internal {
                    context: "agent sent invalid base64".into(),
                    source: Some(Box::new(e)),
                })
            })?;
            String::from_utf8(bytes).map_err(|_| ApiError::BadRequest {
                code: "invalid_encoding",
                message: format!(
                    "{} is not valid UTF-8; read it with encoding=base64",
                    q.path
                ),
            })?
        }
    };
    Ok(Json(FileContentResponse {
        path: q.path,
        content,
        encoding,
        size: got.size,
        offset: got.offset,
        eof: got.eof,
    }))
}

/// Lists a directory (default `/workspace`).
#[utoipa::path(get, path = "/sandboxes/{id}/files/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ListQuery),
    responses(
        (status = 200, description = "Directory entries", body = FileListResponse),
        (status = 400, description = "Not a directory", body = ErrorResponse),
        (status = 404, description = "No such sandbox or directory", body = ErrorResponse),
    ))]
pub async fn list_files(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<FileListResponse> {
    let id = sandbox_id(id)?;
    let path = q.path.unwrap_or_else(|| "/workspace".into());
    let listing = s
        .manager()
        .list_files(
            &id,
            ListFilesRequest {
                path: path.clone(),
                recursive: q.recursive.unwrap_or(false),
                max_depth: q.max_depth,
                max_entries: None,
            },
        )
        .await?;
    Ok(Json(FileListResponse {
        path,
        files: listing.entries.into_iter().map(Into::into).collect(),
        truncated: listing.truncated,
    }))
}

/// Describes one path.
#[utoipa::path(get, path = "/sandboxes/{id}/files/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The path", body = FileEntry),
        (status = 404, description = "No such sandbox or path", body = ErrorResponse),
    ))]
pub async fn stat(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<FileEntry> {
    let id = sandbox_id(id)?;
    Ok(Json(s.manager().stat(&id, q.path).await?.into()))
}

/// Creates a directory.
#[utoipa::path(post, path = "/sandboxes/{id}/files/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirBody,
    responses(
        (status = 200, description = "The directory", body = FileEntry),
        (status = 404, description = "No such sandbox, or a parent is missing and `parents` is false", body = ErrorResponse),
        (status = 409, description = "Already exists (without `parents`)", body = ErrorResponse),
    ))]
pub async fn mkdir(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MkdirBody>,
) -> ApiResult<FileEntry> {
    let id = sandbox_id(id)?;
    let req = MkdirRequest {
        path: body.path,
        parents: body.parents,
        mode: body.mode,
    };
    Ok(Json(s.manager().mkdir(&id, req).await?.into()))
}

async fn delete_path(
    s: &AppState,
    id: String,
    path: String,
    recursive: bool,
) -> ApiResult<DeletedFile> {
    let id = sandbox_id(id)?;
    let req = DeleteFileRequest {
        path: path.clone(),
        recursive,
    };
    s.manager().delete_file(&id, req).await?;
    Ok(Json(DeletedFile {
        path,
        deleted: true,
    }))
}

/// Deletes a file or directory.
#[utoipa::path(delete, path = "/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted", body = DeletedFile),
        (status = 404, description = "No such sandbox or path", body = ErrorResponse),
        (status = 409, description = "Directory not empty and `recursive` not set", body = ErrorResponse),
    ))]
pub async fn delete_file(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<DeletedFile> {
    delete_path(&s, id, q.path, q.recursive.unwrap_or(false)).await
}

/// Deletes a file or directory (body form of `DELETE /sandboxes/{id}/files`).
#[utoipa::path(post, path = "/sandboxes/{id}/files/delete", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = DeleteFileBody,
    responses(
        (status = 200, description = "Deleted", body = DeletedFile),
        (status = 404, description = "No such sandbox or path", body = ErrorResponse),
        (status = 409, description = "Directory not empty and `recursive` not set", body = ErrorResponse),
    ))]
pub async fn delete_file_post(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DeleteFileBody>,
) -> ApiResult<DeletedFile> {
    delete_path(&s, id, body.path, body.recursive).await
}

/// Uploads a file as `multipart/form-data`, streamed into the guest in
/// 1 MiB chunks through a temporary file that is renamed into place at the
/// end (so a failed upload never leaves a partial file at `path`).
#[utoipa::path(post, path = "/sandboxes/{id}/files/upload", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Uploaded", body = WrittenFile),
        (status = 400, description = "No file part", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 413, description = "Larger than max_upload_bytes", body = ErrorResponse),
    ))]
pub async fn upload(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    ApiMultipart(mut mp): ApiMultipart,
) -> ApiResult<WrittenFile> {
    let id = sandbox_id(id)?;
    if q.path.is_empty() || q.path.ends_with('/') {
        return Err(ApiError::invalid(
            "path must name a file (not empty, not ending in '/')",
        ));
    }
    let mut field = loop {
        match mp.next_field().await? {
            None => {
                return Err(ApiError::invalid(
                    "the multipart body has no file part; send the file as a part named `file`",
                ))
            }
            Some(f) if f.name() == Some("file") || f.file_name().is_some() => break f,
            Some(_) => continue,
        }
    };
    let tmp = format!("{}.upload-{:08x}", q.path, rand::random::<u32>());
    let max = s.manager().config().max_upload_bytes;
    let result = stream_to_guest(&s, &id, &tmp, &mut field, max).await;
    let result = match result {
        Ok(total) => s
            .manager()
            .rename(&id, tmp.clone(), q.path.clone())
            .await
            .map(|()| total)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(size) => Ok(Json(WrittenFile { path: q.path, size })),
        Err(e) => {
            let cleanup = DeleteFileRequest {
                path: tmp.clone(),
                recursive: false,
            };
            if let Err(ce) = s.manager().delete_file(&id, cleanup).await {
                tracing::debug!(sandbox_id = %id, path = %tmp, error = %ce, "upload cleanup failed");
            }
            Err(e)
        }
    }
}

async fn stream_to_guest(
    s: &AppState,
    id: &SandboxId,
    tmp: &str,
    field: &mut axum::extract::multipart::Field<'_>,
    max: u64,
) -> Result<u64, ApiError> {
    let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
    let mut total: u64 = 0;
    let mut first = true;
    let write = |data: Vec<u8>, append: bool| async move {
        s.manager()
            .write_file(
                id,
                WriteFileRequest {
                    path: tmp.to_owned(),
                    content: B64.encode(&data),
                    encoding: ContentEncoding::Base64,
                    mode: None,
                    create_parents: true,
                    append,
                },
            )
            .await
            .map_err(ApiError::from)
    };
    while let Some(bytes) = field.chunk().await? {
        total += bytes.len() as u64;
        if total > max {
            return Err(ApiError::TooLarge(format!(
                "upload exceeds the limit of {max} bytes (max_upload_bytes)"
            )));
        }
        let mut data = &bytes[..];
        while !data.is_empty() {
            let take = (UPLOAD_CHUNK_BYTES - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if buf.len() == UPLOAD_CHUNK_BYTES {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(UPLOAD_CHUNK_BYTES));
                write(chunk, !first).await?;
                first = false;
            }
        }
    }
    if !buf.is_empty() || first {
        write(buf, !first).await?;
    }
    Ok(total)
}

/// Lists all workspaces.
#[utoipa::path(get, path = "/workspaces", tag = "workspaces",
    responses((status = 200, description = "All workspaces", body = WorkspaceList)))]
pub async fn list_workspaces(State(s): State<AppState>) -> ApiResult<WorkspaceList> {
    let workspaces = s
        .manager()
        .list_workspaces()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(WorkspaceList { workspaces }))
}

/// Describes one workspace with its lineage.
#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
    ))]
pub async fn get_workspace(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<WorkspaceResponse> {
    let id = workspace_id(id)?;
    Ok(Json(s.manager().get_workspace(&id).await?.into()))
}

/// Deletes a workspace's data for good (refused while a sandbox runs it).
#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "Workspace id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedWorkspace),
        (status = 404, description = "No such workspace (already gone)", body = ErrorResponse),
        (status = 409, description = "A sandbox runs it; destroy the sandbox first", body = ErrorResponse),
    ))]
pub async fn delete_workspace(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<DeletedWorkspace> {
    let id = workspace_id(id)?;
    let m = s.manager().clone();
    let id2 = id.clone();
    detached(async move { m.delete_workspace(&id2).await }).await?;
    Ok(Json(DeletedWorkspace {
        workspace_id: id.into(),
        deleted: true,
    }))
}

/// Port forwarding routes (`/sandboxes/{id}/ports...`): not implemented yet.
#[utoipa::path(get, path = "/sandboxes/{id}/ports", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 501, description = "Not implemented yet", body = ErrorResponse)))]
pub async fn ports_not_implemented() -> ApiError {
    ApiError::NotImplemented("port forwarding")
}

/// Fallback for unknown paths.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Fallback for known paths with an unsupported method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
