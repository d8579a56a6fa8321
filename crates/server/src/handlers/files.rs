//! Files inside a sandbox: write, read, list, stat, mkdir, delete, upload.

use super::ApiResult;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiMultipart, ApiPath, ApiQuery};
use crate::models::*;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_manager::{ByteStream, MakeDir, ManagerError, Upload, WriteFile};
use locale2b_protocol::SandboxId;

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
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<WriteFileBody>,
) -> ApiResult<WrittenFile> {
    if body.path.is_empty() {
        return Err(ApiError::invalid("path must not be empty"));
    }
    let data = match body.encoding {
        Encoding::Base64 => B64
            .decode(&body.content)
            .map_err(|e| ApiError::BadRequest {
                code: "invalid_encoding",
                message: format!(
                    "content is not valid base64 ({e}): send the file's bytes base64-encoded, \
                 or add \"encoding\": \"utf-8\" to send plain text"
                ),
            })?,
        Encoding::Utf8 => body.content.into_bytes(),
    };
    let written = s
        .sandboxes()
        .guest(&id)
        .write_file(WriteFile {
            path: body.path,
            data,
            mode: body.mode,
            create_parents: body.create_parents,
            append: false,
            owner: None,
            in_place: false,
        })
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult<FileContentResponse> {
    let encoding = q.encoding.unwrap_or_default();
    let got = s
        .sandboxes()
        .guest(&id)
        .read_file(&q.path, q.offset.unwrap_or(0), q.length)
        .await?;
    let content = match encoding {
        Encoding::Base64 => B64.encode(&got.data),
        Encoding::Utf8 => String::from_utf8(got.data).map_err(|_| ApiError::BadRequest {
            code: "invalid_encoding",
            message: format!(
                "{} is not valid UTF-8; read it with encoding=base64",
                q.path
            ),
        })?,
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<FileListResponse> {
    let path = q.path.unwrap_or_else(|| "/workspace".into());
    let listing = s
        .sandboxes()
        .guest(&id)
        .list_files(&path, q.recursive.unwrap_or(false), q.max_depth)
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<FileEntry> {
    Ok(Json(s.sandboxes().guest(&id).stat(&q.path).await?.into()))
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<MkdirBody>,
) -> ApiResult<FileEntry> {
    let guest = s.sandboxes().guest(&id);
    Ok(Json(
        guest
            .mkdir(MakeDir {
                path: body.path.clone(),
                parents: body.parents,
                mode: body.mode,
                owner: None,
            })
            .await?
            .into(),
    ))
}

async fn delete_path(
    s: &AppState,
    id: &SandboxId,
    path: String,
    recursive: bool,
) -> ApiResult<DeletedFile> {
    s.sandboxes().guest(id).delete(&path, recursive).await?;
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<DeletedFile> {
    delete_path(&s, &id, q.path, q.recursive.unwrap_or(false)).await
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<DeleteFileBody>,
) -> ApiResult<DeletedFile> {
    delete_path(&s, &id, body.path, body.recursive).await
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
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<PathQuery>,
    ApiMultipart(mut mp): ApiMultipart,
) -> ApiResult<WrittenFile> {
    if q.path.is_empty() || q.path.ends_with('/') {
        return Err(ApiError::invalid(
            "path must name a file (not empty, not ending in '/')",
        ));
    }
    let field = loop {
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
    let up = Upload {
        path: q.path,
        mode: None,
        owner: None,
        max_bytes: s.max_upload_bytes(),
        in_place: false,
    };
    let written = s
        .sandboxes()
        .guest(&id)
        .upload(up, multipart_bytes(field))
        .await?;
    Ok(Json(WrittenFile {
        path: written.path,
        size: written.size,
    }))
}

/// The bytes of a multipart part; a body that breaks off or exceeds the
/// body limit ends the stream with the matching error.
fn multipart_bytes(field: axum::extract::multipart::Field<'_>) -> ByteStream<'_> {
    Box::pin(futures::stream::unfold(Some(field), |field| async move {
        let mut field = field?;
        match field.chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(field))),
            Ok(None) => None,
            Err(e) => {
                let err = if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ManagerError::TooLarge(e.body_text())
                } else {
                    ManagerError::InvalidInput(format!(
                        "reading the upload failed: {}",
                        e.body_text()
                    ))
                };
                Some((Err(err), None))
            }
        }
    }))
}
