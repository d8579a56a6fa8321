//! envd's HTTP file routes: `GET /files` (a raw download) and `POST /files`
//! (multipart or octet-stream uploads, gzip bodies too), authorised by the
//! sandbox's access token or, for links made with `download_url` /
//! `upload_url`, by their signature. Errors are `{code, message}` with the
//! HTTP status as `code`, like envd's.

use super::envd::{self, Envd, Refusal, DEFAULT_USER, SANDBOX_HEADER, TOKEN_HEADER};
use super::http_error;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use locale2b_manager::{ByteStream, FileKind, GuestErrorKind, ManagerError, SandboxInfo, Upload};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The query of both routes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// E2B's signature of a file link: `v1_` + unpadded base64 of
/// sha256(`<path>:<operation>:<user>:<token>[:<expiration>]`).
pub fn signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut text = format!("{path}:{operation}:{user}:{token}");
    if let Some(e) = expiration {
        text.push_str(&format!(":{e}"));
    }
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Finds and authorises the sandbox of a `/files` request: by its header
/// and token, or by a valid signature (a signed link carries no header, so
/// every sandbox with a token is tried).
async fn authorise(
    state: &AppState,
    headers: &HeaderMap,
    q: &FilesQuery,
    operation: &str,
) -> Result<Envd, Response> {
    let user = q.username.clone().filter(|u| !u.is_empty());
    let header_id = headers
        .get(SANDBOX_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let make = |info: SandboxInfo| {
        Envd::for_sandbox(
            state,
            info,
            user.clone().unwrap_or_else(|| DEFAULT_USER.into()),
        )
        .map_err(|r| r.http())
    };
    if let (Some(id), Some(_)) = (header_id, token) {
        let info = envd::sandbox(state, id).await.map_err(|r| r.http())?;
        if !envd::token_matches(&info, token) {
            return Err(unauthorized());
        }
        return make(info);
    }
    let Some(sig) = &q.signature else {
        // No token and no signature: only a sandbox without a token.
        if let Some(id) = header_id {
            let info = envd::sandbox(state, id).await.map_err(|r| r.http())?;
            if envd::token_matches(&info, None) {
                return make(info);
            }
        }
        return Err(unauthorized());
    };
    if let Some(exp) = q.signature_expiration {
        if exp < now_unix() {
            return Err(http_error(
                StatusCode::UNAUTHORIZED,
                "signature is already expired",
            ));
        }
    }
    let path = q.path.clone().unwrap_or_default();
    let user_part = user.clone().unwrap_or_default();
    let candidates = match header_id {
        Some(id) => vec![envd::sandbox(state, id).await.map_err(|r| r.http())?],
        None => state.sandboxes().list().await,
    };
    for info in candidates {
        let Some(t) = &info.access_token else {
            continue;
        };
        let want = signature(
            &path,
            operation,
            &user_part,
            t.expose(),
            q.signature_expiration,
        );
        if subtle::ConstantTimeEq::ct_eq(want.as_bytes(), sig.as_bytes()).into() {
            return make(info);
        }
    }
    Err(http_error(
        StatusCode::UNAUTHORIZED,
        "invalid signature: the link does not match any sandbox (or its path, user, operation or expiration changed)",
    ))
}

fn unauthorized() -> Response {
    http_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized access, please provide a valid access token or method signing if supported",
    )
}

/// A manager error as envd's HTTP error.
fn file_error(e: ManagerError, path: &str) -> Response {
    let status = match &e {
        ManagerError::Guest { kind, message } => match kind {
            GuestErrorKind::NotFound => {
                return http_error(
                    StatusCode::NOT_FOUND,
                    &format!("path '{path}' does not exist"),
                )
            }
            GuestErrorKind::IsADirectory => {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &format!("path '{path}' is a directory"),
                )
            }
            GuestErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            GuestErrorKind::Failed { .. } if message.contains("No space left") => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            GuestErrorKind::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        ManagerError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        ManagerError::NotFound { .. } => StatusCode::NOT_FOUND,
        ManagerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ManagerError::Conflict(_) => StatusCode::CONFLICT,
        ManagerError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ManagerError::Vm { .. } | ManagerError::AtCapacity { .. } => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http_error(status, &e.to_string())
}

/// `GET /files`: the file's bytes, streamed from the guest.
pub async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
) -> Response {
    let envd = match authorise(&state, &headers, &q, "read").await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let Some(asked) = q.path.clone().filter(|p| !p.is_empty()) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "the path query parameter is required",
        );
    };
    let path = match envd.resolve(&asked) {
        Ok(p) => p,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, &e.message),
    };
    let info = match envd.guest.stat(&path).await {
        Ok(i) => i,
        Err(e) => return file_error(e, &path),
    };
    if info.kind == FileKind::Directory {
        return http_error(
            StatusCode::BAD_REQUEST,
            &format!("path '{path}' is a directory"),
        );
    }
    // Errors (permission, vanished) answer properly before the body starts.
    let download = match envd.guest.download(&path, 0, None).await {
        Ok(d) => d,
        Err(e) => return file_error(e, &path),
    };
    let name = path.rsplit('/').next().unwrap_or("file").to_owned();
    let size = download.size;
    let body = Body::from_stream(
        download
            .bytes
            .map(|c| c.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(v) = size.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename={name}")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `POST /files`: multipart (every part named `file`; its target is the
/// `path` parameter, else the part's file name as a path) or
/// `application/octet-stream` (needs `path`); `Content-Encoding: gzip` is
/// decompressed. Answers `[{"path", "name", "type": "file"}]`.
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FilesQuery>,
    body: Body,
) -> Response {
    let envd = match authorise(&state, &headers, &q, "write").await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    if headers
        .keys()
        .any(|k| k.as_str().starts_with("x-metadata-"))
    {
        return http_error(
            StatusCode::BAD_REQUEST,
            "file metadata (X-Metadata-* headers) is not supported by this server yet; upload without metadata",
        );
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => false,
        Some(v) if v == "identity" || v.is_empty() => false,
        Some(v) if v == "gzip" => true,
        Some(other) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &format!("Content-Encoding {other:?} is not supported (gzip is)"),
            )
        }
    };
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let max = state.max_upload_bytes();
    let stream = decoded(body.into_data_stream(), gzip);
    let mut written = Vec::new();
    if media
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let Some(boundary) = multer::parse_boundary(&media).ok() else {
            return http_error(
                StatusCode::BAD_REQUEST,
                "the multipart body has no boundary",
            );
        };
        let mut mp = multer::Multipart::new(stream, boundary);
        let mut seen = std::collections::HashSet::new();
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return http_error(multipart_status(&e), &e.to_string()),
            };
            if field.name() != Some("file") {
                continue;
            }
            let target = match q.path.clone().filter(|p| !p.is_empty()) {
                Some(p) => p,
                None => match field.file_name() {
                    Some(f) if !f.is_empty() => f.to_owned(),
                    _ => {
                        return http_error(
                            StatusCode::BAD_REQUEST,
                            "a file part has no file name and the request no path parameter",
                        )
                    }
                },
            };
            let path = match envd.resolve(&target) {
                Ok(p) => p,
                Err(e) => return http_error(StatusCode::BAD_REQUEST, &e.message),
            };
            if !seen.insert(path.clone()) {
                return http_error(
                    StatusCode::BAD_REQUEST,
                    &format!("two file parts target the same path {path}"),
                );
            }
            let bytes: ByteStream<'_> = Box::pin(field.map_err(|e| {
                if multipart_status(&e) == StatusCode::PAYLOAD_TOO_LARGE {
                    ManagerError::TooLarge(e.to_string())
                } else {
                    ManagerError::InvalidInput(format!("reading the upload failed: {e}"))
                }
            }));
            match store(&envd, &path, max, bytes).await {
                Ok(()) => written.push(path),
                Err(resp) => return resp,
            }
        }
        if written.is_empty() {
            return http_error(
                StatusCode::BAD_REQUEST,
                "the multipart body has no part named file",
            );
        }
    } else if media
        .to_ascii_lowercase()
        .starts_with("application/octet-stream")
    {
        let Some(target) = q.path.clone().filter(|p| !p.is_empty()) else {
            return http_error(
                StatusCode::BAD_REQUEST,
                "an application/octet-stream upload needs the path query parameter",
            );
        };
        let path = match envd.resolve(&target) {
            Ok(p) => p,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, &e.message),
        };
        let bytes: ByteStream<'_> =
            Box::pin(stream.map_err(|e| {
                ManagerError::InvalidInput(format!("reading the upload failed: {e}"))
            }));
        if let Err(resp) = store(&envd, &path, max, bytes).await {
            return resp;
        }
        written.push(path);
    } else {
        return http_error(
            StatusCode::BAD_REQUEST,
            &format!("unsupported content type {media:?}: send multipart/form-data or application/octet-stream"),
        );
    }
    let out: Vec<serde_json::Value> = written
        .iter()
        .map(|p| json!({"path": p, "name": p.rsplit('/').next().unwrap_or(""), "type": "file"}))
        .collect();
    (StatusCode::OK, axum::Json(out)).into_response()
}

fn multipart_status(e: &multer::Error) -> StatusCode {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn store(envd: &Envd, path: &str, max: u64, bytes: ByteStream<'_>) -> Result<(), Response> {
    if path.ends_with('/') || path == "/" {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            &format!("path '{path}' is a directory"),
        ));
    }
    let up = Upload {
        path: path.to_owned(),
        mode: Some(0o644),
        owner: Some(envd.user.clone()),
        max_bytes: max,
        // Like envd: the file itself is written (watchers see it written).
        in_place: true,
        sha256: None,
    };
    envd.guest
        .upload(up, bytes)
        .await
        .map(|_| ())
        .map_err(|e| file_error(e, path))
}

/// The body's bytes, gunzipped when `gzip`.
fn decoded(
    body: axum::body::BodyDataStream,
    gzip: bool,
) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    let raw = body.map_err(std::io::Error::other);
    if !gzip {
        return raw.boxed();
    }
    let reader = tokio_util::io::StreamReader::new(raw);
    let decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
    tokio_util::io::ReaderStream::new(decoder).boxed()
}

/// `GET /health` with a sandbox header: 204 while the sandbox runs, 502
/// when it is gone or not running.
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match Envd::from_headers(&state, &headers).await {
        Ok(_) => (
            StatusCode::NO_CONTENT,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response(),
        Err(Refusal::Unauthorized(m)) => http_error(StatusCode::UNAUTHORIZED, &m),
        Err(Refusal::NotFound(m) | Refusal::NotRunning(m) | Refusal::Port(m)) => {
            http_error(StatusCode::BAD_GATEWAY, &m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_e2b_v1() {
        let s = signature("/home/user/a.txt", "read", "user", "tok", None);
        assert!(s.starts_with("v1_"));
        assert!(!s.ends_with('='));
        assert_ne!(
            s,
            signature("/home/user/a.txt", "write", "user", "tok", None)
        );
        assert_ne!(
            s,
            signature("/home/user/a.txt", "read", "user", "tok", Some(5))
        );
        // The digest of the documented text, computed independently.
        let expected = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(Sha256::digest(b"/p:read::t:10"));
        assert_eq!(
            signature("/p", "read", "", "t", Some(10)),
            format!("v1_{expected}")
        );
    }
}
