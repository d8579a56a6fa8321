//! A minimal HTTP/1.1 client for Firecracker's API socket.
//!
//! Requests are tiny JSON bodies with `Content-Length`; every request uses a
//! fresh connection and its own timeout. Responses are read by status line,
//! headers and `Content-Length` (no chunked encoding: Firecracker does not
//! use it).

use crate::VmmError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest response accepted (Firecracker's answers are a few hundred bytes).
const MAX_RESPONSE: usize = 1 << 20;

/// One parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Client bound to one API socket.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

/// Error body of Firecracker (`400 {"fault_message": "..."}`).
#[derive(Deserialize)]
struct Fault {
    fault_message: String,
}

impl ApiClient {
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        Self { socket, timeout }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request and maps anything but 2xx to [`VmmError::Api`].
    /// `timeout` overrides the client's default (slow calls: InstanceStart,
    /// snapshots).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, VmmError> {
        let request = format!("{method} {path}");
        let timeout = timeout.unwrap_or(self.timeout);
        let body = body.map(serde_json::Value::to_string);
        let result = tokio::time::timeout(timeout, self.exchange(method, path, body.as_deref()))
            .await
            .map_err(|_| VmmError::Timeout {
                what: format!("firecracker to answer {request}"),
                after: timeout,
            })?;
        let response = result.map_err(|source| VmmError::Io {
            context: format!("firecracker API {request} on {}", self.socket.display()),
            source,
        })?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        let message = match serde_json::from_slice::<Fault>(&response.body) {
            Ok(f) => f.fault_message,
            Err(_) => format!(
                "HTTP {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body).trim()
            ),
        };
        Err(VmmError::Api {
            api: "firecracker",
            request,
            message,
        })
    }

    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Result<(), VmmError> {
        self.call("PUT", path, Some(body), None).await.map(drop)
    }

    /// GET returning parsed JSON.
    pub async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, VmmError> {
        let r = self.call("GET", path, None, None).await?;
        serde_json::from_slice(&r.body).map_err(|e| VmmError::Api {
            api: "firecracker",
            request: format!("GET {path}"),
            message: format!("unparsable answer: {e}"),
        })
    }

    /// True when something accepts connections on the socket.
    pub async fn can_connect(&self) -> bool {
        UnixStream::connect(&self.socket).await.is_ok()
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Response> {
        let mut stream = UnixStream::connect(&self.socket).await?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(body) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        } else {
            req.push_str("\r\n");
        }
        stream.write_all(req.as_bytes()).await?;
        read_response(&mut stream).await
    }
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads one HTTP/1.1 response from `stream`.
pub(crate) async fn read_response<R: AsyncReadExt + Unpin>(
    stream: &mut R,
) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(512);
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(bad("response headers too large"));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                let n: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| bad("bad Content-Length"))?;
                if n > MAX_RESPONSE {
                    return Err(bad("response body too large"));
                }
                content_length = Some(n);
            }
        }
    }
    let mut body = buf[header_end + 4..].to_vec();
    match content_length {
        Some(n) => {
            while body.len() < n {
                let mut chunk = vec![0u8; n - body.len()];
                let got = stream.read(&mut chunk).await?;
                if got == 0 {
                    return Err(bad("connection closed inside the body"));
                }
                body.extend_from_slice(&chunk[..got]);
            }
            body.truncate(n);
        }
        None if status == 204 || status == 304 || (100..200).contains(&status) => body.clear(),
        None => {
            stream
                .take(MAX_RESPONSE as u64)
                .read_to_end(&mut body)
                .await?;
        }
    }
    Ok(Response { status, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_no_content_and_json_answers() {
        let mut r: &[u8] = b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n";
        let resp = read_response(&mut r).await.expect("204");
        assert_eq!(
            resp,
            Response {
                status: 204,
                body: vec![]
            }
        );

        let mut r: &[u8] =
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"x\"}\nEXTRA";
        let resp = read_response(&mut r).await.expect("400");
        assert_eq!(resp.status, 400);
        assert_eq!(resp.body, b"{\"fault_message\":\"x\"}\n");
    }

    #[tokio::test]
    async fn rejects_truncated_answers() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}";
        assert!(read_response(&mut r).await.is_err());
        let mut r: &[u8] = b"HTTP/1.1 200";
        assert!(read_response(&mut r).await.is_err());
        let mut r: &[u8] = b"garbage\r\n\r\n";
        assert!(read_response(&mut r).await.is_err());
    }
}
