//! A small REST client for the benchmark: every call returns the parsed JSON
//! body and the wall time of the round trip (request sent to body read).

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A failed API call: transport error or a non-2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer (connection refused, timeout, ...).
    #[error("{method} {path}: no answer: {source}")]
    Transport {
        /// HTTP method.
        method: Method,
        /// Path called.
        path: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        /// HTTP method.
        method: Method,
        /// Path called.
        path: String,
        /// Status code.
        status: StatusCode,
        /// The error body's `error`/`message` field, or the raw body.
        message: String,
    },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport { .. } => None,
        }
    }
}

/// Client bound to one server and API key.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// A JSON answer and how long it took.
#[derive(Debug)]
pub struct Timed {
    /// Parsed body (`Value::Null` when empty).
    pub body: Value,
    /// Round-trip time in milliseconds.
    pub ms: f64,
}

/// Milliseconds since `t`, as a float.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Api {
    /// A client for `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, key: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(8)
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    /// The request for `method path` with the key, the timeout and an
    /// optional JSON body.
    fn request(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .header("X-API-Key", &self.key)
            .timeout(timeout);
        match body {
            Some(b) => req.json(b),
            None => req,
        }
    }

    /// Calls `method path` with an optional JSON body; `timeout` bounds the
    /// whole call.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Timed, ApiError> {
        let transport = |source| ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let req = self.request(&method, path, body, timeout);
        let start = Instant::now();
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        let ms = ms_since(start);
        let parsed: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let message = parsed
                .get("error")
                .or_else(|| parsed.get("message"))
                .and_then(|m| {
                    m.as_str()
                        .map(str::to_owned)
                        .or_else(|| m.get("message").and_then(Value::as_str).map(str::to_owned))
                })
                .unwrap_or_else(|| parsed.to_string());
            return Err(ApiError::Status {
                method,
                path: path.to_owned(),
                status,
                message,
            });
        }
        Ok(Timed { body: parsed, ms })
    }

    /// Sends `method path` and returns the response as it starts (status
    /// checked), so the caller can read its body as it streams.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<reqwest::Response, ApiError> {
        let transport = |source| ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let resp = self
            .request(&method, path, body, timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let message = resp.text().await.unwrap_or_default();
            return Err(ApiError::Status {
                method,
                path: path.to_owned(),
                status,
                message,
            });
        }
        Ok(resp)
    }

    /// A request for `method path` with the key and `timeout`, to fill in
    /// (a raw body, headers) and send.
    pub fn raw(&self, method: Method, path: &str, timeout: Duration) -> reqwest::RequestBuilder {
        self.request(&method, path, None, timeout)
    }

    /// GET with the default timeout.
    pub async fn get(&self, path: &str) -> Result<Timed, ApiError> {
        self.call(Method::GET, path, None, Duration::from_secs(60))
            .await
    }

    /// POST a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Timed, ApiError> {
        self.call(Method::POST, path, Some(body), timeout).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str, timeout: Duration) -> Result<Timed, ApiError> {
        self.call(Method::DELETE, path, None, timeout).await
    }
}

/// A string field of a JSON object, or an error naming it.
pub fn str_field<'a>(v: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("answer has no string field {name:?}: {v}"))
}
