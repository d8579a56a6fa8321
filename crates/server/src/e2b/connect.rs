//! The Connect protocol (connectrpc.com) with the JSON codec, as the E2B
//! SDKs speak it to envd: unary calls are `POST /<pkg.Service>/<Method>`
//! with a JSON body and a JSON answer; streams carry *envelopes* (one flags
//! byte, a 4-byte big-endian length, the JSON message) with content type
//! `application/connect+json`, and end with an envelope flagged `0x02`
//! holding `{}` or `{"error": ...}`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use locale2b_manager::{GuestErrorKind, ManagerError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// Content type of a unary request and answer.
pub const UNARY_TYPE: &str = "application/json";
/// Content type of a stream (request and answer).
pub const STREAM_TYPE: &str = "application/connect+json";
/// Flag of a stream's final envelope.
const END_STREAM: u8 = 0x02;
/// Flag of a compressed message (not supported: nothing is compressed).
const COMPRESSED: u8 = 0x01;
/// Largest message accepted in a request envelope.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Keepalive interval of a stream when the client asks for none.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::Unknown => "unknown",
            Self::InvalidArgument => "invalid_argument",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Unknown | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidArgument | Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC error: a code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code.
    pub code: Code,
    /// What went wrong and what to do.
    pub message: String,
}

impl RpcError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    fn body(&self) -> serde_json::Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }

    /// The final envelope of a stream that failed.
    pub fn end_frame(&self) -> Bytes {
        envelope(END_STREAM, &json!({"error": self.body()}))
    }
}

impl From<ManagerError> for RpcError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::InvalidInput(_) => Code::InvalidArgument,
            ManagerError::NotFound { .. } => Code::NotFound,
            ManagerError::Conflict(_) | ManagerError::SnapshotInvalid(_) => {
                Code::FailedPrecondition
            }
            ManagerError::Unsupported(_) | ManagerError::BackendUnsupported(_) => {
                Code::Unimplemented
            }
            ManagerError::NetworkUnavailable(_) => Code::PermissionDenied,
            ManagerError::TooLarge(_)
            | ManagerError::AtCapacity { .. }
            | ManagerError::QuotaExceeded(_)
            | ManagerError::InsufficientStorage(_) => Code::ResourceExhausted,
            ManagerError::Guest { kind, .. } => match kind {
                GuestErrorKind::NotFound => Code::NotFound,
                GuestErrorKind::PermissionDenied => Code::PermissionDenied,
                GuestErrorKind::AlreadyExists => Code::AlreadyExists,
                GuestErrorKind::IsADirectory
                | GuestErrorKind::NotADirectory
                | GuestErrorKind::InvalidRequest
                | GuestErrorKind::DirectoryNotEmpty => Code::InvalidArgument,
                GuestErrorKind::TooLarge => Code::ResourceExhausted,
                GuestErrorKind::InvalidState => Code::FailedPrecondition,
                GuestErrorKind::Failed { .. } => Code::Internal,
            },
            ManagerError::Timeout { .. } => Code::DeadlineExceeded,
            ManagerError::Vm { .. } => Code::Unavailable,
            ManagerError::Internal { .. } => Code::Internal,
        };
        if code == Code::Internal {
            tracing::warn!(error = %e, "envd call failed");
        }
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for RpcError {
    /// A unary error (a stream's errors go in its final envelope).
    fn into_response(self) -> Response {
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_TYPE))],
            self.body().to_string(),
        )
            .into_response()
    }
}

/// A successful unary answer.
pub fn unary<T: Serialize>(msg: &T) -> Response {
    match serde_json::to_vec(msg) {
        Ok(body) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_TYPE))],
            body,
        )
            .into_response(),
        Err(e) => {
            RpcError::new(Code::Internal, format!("cannot encode the answer: {e}")).into_response()
        }
    }
}

/// One envelope with `payload` as JSON.
pub fn envelope(flags: u8, payload: &impl Serialize) -> Bytes {
    let json = serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&json);
    Bytes::from(out)
}

/// A message envelope.
pub fn message(msg: &impl Serialize) -> Bytes {
    envelope(0, msg)
}

/// The final envelope of a stream that succeeded.
pub fn end_ok() -> Bytes {
    envelope(END_STREAM, &json!({}))
}

/// A stream answer whose envelopes come from `frames`; the producer ends
/// it with [`end_ok`] or [`RpcError::end_frame`].
pub fn stream_response(frames: impl Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(STREAM_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// A stream answer holding only a final error envelope (HTTP 200, as
/// Connect servers answer a stream that failed before its first message).
pub fn stream_error(e: RpcError) -> Response {
    stream_response(futures::stream::iter([e.end_frame()]))
}

/// The media type of a request, without parameters, lower case.
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request is a Connect stream (by its content type).
pub fn is_stream_request(headers: &HeaderMap) -> bool {
    media_type(headers).starts_with("application/connect+")
}

/// Checks a unary request's content type and parses its JSON body.
///
/// # Errors
/// An answer to send instead: 415 for another codec, `invalid_argument`
/// for a body that is not the message.
pub fn parse_unary<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, Response> {
    let media = media_type(headers);
    if media != UNARY_TYPE {
        return Err(unsupported_media(&media));
    }
    parse_json(body).map_err(IntoResponse::into_response)
}

fn unsupported_media(media: &str) -> Response {
    let e = RpcError::new(
        Code::Unknown,
        format!("content type {media:?} is not supported: only the Connect JSON codec is (application/json for unary calls, application/connect+json for streams)"),
    );
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        [(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_TYPE))],
        e.body().to_string(),
    )
        .into_response()
}

/// The whole body of a unary request (at most [`MAX_MESSAGE`] bytes).
///
/// # Errors
/// A `resource_exhausted` answer for a larger or broken body.
pub async fn unary_body(body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, MAX_MESSAGE).await.map_err(|e| {
        RpcError::new(Code::ResourceExhausted, format!("request body: {e}")).into_response()
    })
}

/// Parses one JSON message (an empty body is the empty message).
///
/// # Errors
/// `invalid_argument` naming the problem.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RpcError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| RpcError::invalid(format!("invalid request message: {e}")))
}

/// Reads the envelopes of a streaming request body, one message at a time.
#[derive(Debug)]
pub struct Envelopes {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
}

impl Envelopes {
    /// Checks a streaming request's content type and starts reading it.
    ///
    /// # Errors
    /// 415 for another codec or a unary content type.
    pub fn open(headers: &HeaderMap, body: Body) -> Result<Self, Response> {
        let media = media_type(headers);
        if media != STREAM_TYPE {
            return Err(unsupported_media(&media));
        }
        Ok(Self {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
        })
    }

    /// The next message, `None` at the end of the body (or after the
    /// client's end-of-stream envelope).
    ///
    /// # Errors
    /// `invalid_argument` for a truncated or compressed envelope or bad
    /// JSON; `resource_exhausted` for one larger than [`MAX_MESSAGE`].
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RpcError> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(RpcError::new(
                        Code::ResourceExhausted,
                        format!("a request message of {len} bytes exceeds the limit of {MAX_MESSAGE} bytes"),
                    ));
                }
                if flags & COMPRESSED != 0 {
                    return Err(RpcError::invalid(
                        "compressed messages are not supported; send them uncompressed",
                    ));
                }
                if self.buf.len() >= 5 + len {
                    let payload: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
                    if flags & END_STREAM != 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    return parse_json(&payload).map(Some);
                }
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RpcError::invalid(format!(
                        "the request ended inside an envelope ({} bytes left over)",
                        self.buf.len()
                    )))
                };
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("reading the request failed: {e}"),
                    ))
                }
                None => self.done = true,
            }
        }
    }
}

/// The `Connect-Timeout-Ms` header.
///
/// # Errors
/// `invalid_argument` for a value that is not a positive number.
pub fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, RpcError> {
    let Some(v) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            RpcError::invalid(format!(
                "connect-timeout-ms must be a positive number of milliseconds (got {v:?})"
            ))
        })?;
    Ok(Some(Duration::from_millis(ms)))
}

/// The `Keepalive-Ping-Interval` header (seconds; 90 when absent or bad).
pub fn keepalive(headers: &HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stream_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_TYPE));
        h
    }

    #[tokio::test]
    async fn envelopes_split_across_chunks_are_read_whole() {
        let a = message(&json!({"n": 1}));
        let b = message(&json!({"n": 2}));
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let chunks: Vec<Result<Bytes, std::io::Error>> = all
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut env = Envelopes::open(&stream_headers(), body).unwrap();
        let one: serde_json::Value = env.next().await.unwrap().unwrap();
        let two: serde_json::Value = env.next().await.unwrap().unwrap();
        assert_eq!((one["n"].as_i64(), two["n"].as_i64()), (Some(1), Some(2)));
        assert!(env.next::<serde_json::Value>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bad_envelopes_are_clear_errors() {
        let cases: Vec<(Vec<u8>, Code)> = vec![
            (vec![0, 0, 0, 0, 9, b'{'], Code::InvalidArgument),
            (vec![1, 0, 0, 0, 2, b'{', b'}'], Code::InvalidArgument),
            (vec![0, 0xff, 0xff, 0xff, 0xff], Code::ResourceExhausted),
            (vec![0, 0, 0, 0, 3, b'a', b'b', b'c'], Code::InvalidArgument),
        ];
        for (bytes, code) in cases {
            let mut env = Envelopes::open(&stream_headers(), Body::from(bytes.clone())).unwrap();
            let err = env.next::<serde_json::Value>().await.unwrap_err();
            assert_eq!(err.code, code, "{bytes:?}: {}", err.message);
        }
        let mut unary = HeaderMap::new();
        unary.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/proto"),
        );
        let resp = Envelopes::open(&unary, Body::empty()).unwrap_err();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn end_frames_carry_the_error() {
        let f = RpcError::new(Code::NotFound, "no such process").end_frame();
        assert_eq!(f[0], END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&f[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(&end_ok()[5..], b"{}");
    }

    #[test]
    fn timeouts_and_keepalives_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(timeout(&h).unwrap(), None);
        h.insert("connect-timeout-ms", HeaderValue::from_static("1500"));
        assert_eq!(timeout(&h).unwrap(), Some(Duration::from_millis(1500)));
        h.insert("connect-timeout-ms", HeaderValue::from_static("soon"));
        assert_eq!(timeout(&h).unwrap_err().code, Code::InvalidArgument);
        assert_eq!(keepalive(&h), DEFAULT_KEEPALIVE);
        h.insert("keepalive-ping-interval", HeaderValue::from_static("50"));
        assert_eq!(keepalive(&h), Duration::from_secs(50));
    }
}
