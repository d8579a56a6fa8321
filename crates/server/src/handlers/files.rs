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
use futures::StreamExt as _;
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
    body: Result<ApiJson<WriteFileBody>, ApiError>,
) -> ApiResult<WrittenFile> {
    let ApiJson(body) = body.map_err(|e| match e {
        ApiError::Rejected { status, .. } if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!(
                "the JSON body is larger than max_body_bytes ({} bytes, LOCALE2B_MAX_BODY_BYTES): \
                 send big files raw with PUT /sandboxes/{id}/files/content (up to max_upload_bytes)",
                s.max_body_bytes()
            ))
        }
        other => other,
    })?;
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
        sha256: written.sha256,
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
    let max = json_read_max(s.max_body_bytes());
    let got = s
        .sandboxes()
        .guest(&id)
        .read_file(&q.path, q.offset.unwrap_or(0), q.length, max)
        .await
        .map_err(|e| match e {
            ManagerError::TooLarge(m) => ApiError::TooLarge(format!(
                "{m} (one JSON answer carries at most {max} bytes, from max_body_bytes): use offset and length, or GET /sandboxes/{id}/files/content for the raw bytes"
            )),
            other => other.into(),
        })?;
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
        sha256: None,
    };
    let written = s
        .sandboxes()
        .guest(&id)
        .upload(up, multipart_bytes(field))
        .await?;
    Ok(Json(WrittenFile {
        path: written.path,
        size: written.size,
        sha256: written.sha256,
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

/// Most file bytes one JSON read answers: what fits, base64-encoded, in
/// the body limit, with room for the rest of the answer.
pub fn json_read_max(max_body_bytes: usize) -> u64 {
    (max_body_bytes.saturating_sub(4096) / 4 * 3) as u64
}

/// A `Range: bytes=...` header against a file of `size` bytes: the first
/// byte and the length, `Err(())` when it cannot be satisfied, `None` for
/// no (or an unusable, e.g. multi-part) range.
fn byte_range(header: Option<&str>, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), None) if b.is_empty() => (start, size.saturating_sub(start)),
        (Some(start), Some(end)) if end >= start => (
            start,
            (end.min(size.saturating_sub(1)) + 1).saturating_sub(start),
        ),
        (None, Some(suffix)) if a.is_empty() => (size.saturating_sub(suffix), suffix.min(size)),
        _ => return None,
    };
    if range.0 >= size || range.1 == 0 {
        return Some(Err(()));
    }
    Some(Ok(range))
}

/// Streams a file's raw bytes, from one open file (so a file replaced
/// meanwhile comes whole, old or new). Regular files answer with
/// `Content-Length` and take one `Range: bytes=` range (206); pipes and
/// pseudo-files stream until their end.
#[utoipa::path(get, path = "/sandboxes/{id}/files/content", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ContentQuery,
           ("Range" = Option<String>, Header, description = "One range, `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`")),
    responses(
        (status = 200, description = "The bytes (application/octet-stream)"),
        (status = 206, description = "The range asked for, with Content-Range"),
        (status = 400, description = "A directory, or a bad path", body = ErrorResponse),
        (status = 404, description = "No such sandbox or file", body = ErrorResponse),
        (status = 416, description = "The range is outside the file", body = ErrorResponse),
    ))]
pub async fn get_content(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<ContentQuery>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, ApiError> {
    use axum::http::{header as h, HeaderValue, StatusCode};
    use axum::response::IntoResponse as _;
    let guest = s.sandboxes().guest(&id);
    let info = guest.stat(&q.path).await?;
    if info.kind == locale2b_manager::FileKind::Directory {
        return Err(ApiError::invalid(format!("{} is a directory", q.path)));
    }
    // A regular file with a size: Content-Length and ranges.
    let known =
        (info.kind == locale2b_manager::FileKind::File && info.size > 0).then_some(info.size);
    let mut offset = q.offset.unwrap_or(0);
    let mut length = q.length;
    let mut partial = None;
    if let Some(size) = known {
        let range = headers.get(h::RANGE).and_then(|v| v.to_str().ok());
        match byte_range(range, size) {
            Some(Ok((start, len))) => {
                offset = start;
                length = Some(len);
                partial = Some((start, start + len - 1, size));
            }
            Some(Err(())) => {
                let mut resp = ApiError::BadRequest {
                    code: "range_not_satisfiable",
                    message: format!("the range is outside the file's {size} bytes"),
                }
                .into_response();
                *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(h::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
            None => {}
        }
        let rest = size.saturating_sub(offset);
        length = Some(length.map_or(rest, |l| l.min(rest)));
    }
    let download = guest.download(&q.path, offset, length).await?;
    // Never more than announced, even if the file grew meanwhile.
    let announced = known.and(length);
    let mut left = announced.unwrap_or(u64::MAX);
    let bytes = download.bytes.map(move |chunk| {
        chunk
            .map(|mut b| {
                if (b.len() as u64) > left {
                    b.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                }
                left -= b.len() as u64;
                b
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    let mut resp = axum::body::Body::from_stream(bytes).into_response();
    let hdrs = resp.headers_mut();
    hdrs.insert(
        h::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if known.is_some() {
        hdrs.insert(h::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(n) = announced {
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            hdrs.insert(h::CONTENT_LENGTH, v);
        }
    }
    if let Some((a, b, size)) = partial {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
            hdrs.insert(h::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(resp)
}

/// Writes a file from the raw request body (any size up to
/// `max_upload_bytes`), atomically: the body goes to a temporary file that
/// is renamed into place at the end, so a reader sees the old file or the
/// new one and a failed upload leaves the old one. With a SHA-256 (query
/// `sha256` or header `X-Content-SHA256`), a body that does not match is
/// refused and nothing is written.
#[utoipa::path(put, path = "/sandboxes/{id}/files/content", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PutContentQuery,
           ("X-Content-SHA256" = Option<String>, Header, description = "Expected SHA-256 of the body, hex")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Written, with the SHA-256 of what was written", body = WrittenFile),
        (status = 400, description = "Checksum mismatch, a directory, a bad path or mode", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 413, description = "Larger than max_upload_bytes", body = ErrorResponse),
    ))]
pub async fn put_content(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<PutContentQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<WrittenFile> {
    if let Some(m) = q.mode {
        if m > 0o7777 {
            return Err(ApiError::invalid(format!(
                "mode {m:o} has bits beyond 0o7777"
            )));
        }
    }
    let sha256 = q.sha256.clone().or_else(|| {
        headers
            .get("x-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    });
    if let Some(h) = &sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid("sha256 must be 64 hex digits"));
        }
    }
    let max = s.max_upload_bytes();
    let bytes: ByteStream<'_> = Box::pin(body.into_data_stream().map(|c| {
        c.map_err(|e| ManagerError::InvalidInput(format!("reading the body failed: {e}")))
    }));
    let up = Upload {
        path: q.path,
        mode: q.mode,
        owner: None,
        max_bytes: max,
        in_place: false,
        sha256,
    };
    let written = s.sandboxes().guest(&id).upload(up, bytes).await?;
    Ok(Json(WrittenFile {
        path: written.path,
        size: written.size,
        sha256: written.sha256,
    }))
}

/// SHA-256 of a file, computed inside the guest (the file is read there,
/// nothing is sent).
#[utoipa::path(get, path = "/sandboxes/{id}/files/checksum", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "Size and SHA-256", body = ChecksumResponse),
        (status = 400, description = "A directory", body = ErrorResponse),
        (status = 404, description = "No such sandbox or file", body = ErrorResponse),
    ))]
pub async fn checksum(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<ChecksumResponse> {
    let c = s.sandboxes().guest(&id).checksum(&q.path).await?;
    Ok(Json(ChecksumResponse {
        path: q.path,
        size: c.size,
        sha256: c.sha256,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Some(Ok((0, 10))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Some(Ok((90, 10))));
        assert_eq!(byte_range(Some("bytes=-5"), 100), Some(Ok((95, 5))));
        assert_eq!(byte_range(Some("bytes=50-500"), 100), Some(Ok((50, 50))));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Some(Err(())));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), None);
        assert_eq!(byte_range(Some("items=0-1"), 100), None);
        assert_eq!(byte_range(None, 100), None);
        assert_eq!(json_read_max(16 * 1024 * 1024), 12_579_840);
    }
}
