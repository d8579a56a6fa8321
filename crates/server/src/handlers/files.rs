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
use locale2b_manager::{GuestOps, WriteFile};
use locale2b_protocol::SandboxId;

/// Size of each write while streaming an upload into the guest.
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

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
            .mkdir(&body.path, body.parents, body.mode)
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
    let guest = s.sandboxes().guest(&id);
    let tmp = format!("{}.upload-{:08x}", q.path, rand::random::<u32>());
    let max = s.max_upload_bytes();
    let result = match stream_to_guest(guest.as_ref(), &tmp, &mut field, max).await {
        Ok(total) => guest
            .rename(&tmp, &q.path)
            .await
            .map(|()| total)
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(size) => Ok(Json(WrittenFile { path: q.path, size })),
        Err(e) => {
            if let Err(ce) = guest.delete(&tmp, false).await {
                tracing::debug!(sandbox_id = %id, path = %tmp, error = %ce, "upload cleanup failed");
            }
            Err(e)
        }
    }
}

async fn stream_to_guest(
    guest: &dyn GuestOps,
    tmp: &str,
    field: &mut axum::extract::multipart::Field<'_>,
    max: u64,
) -> Result<u64, ApiError> {
    let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
    let mut total: u64 = 0;
    let mut first = true;
    let write = |data: Vec<u8>, append: bool| async move {
        guest
            .write_file(WriteFile {
                path: tmp.to_owned(),
                data,
                mode: None,
                create_parents: true,
                append,
            })
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
