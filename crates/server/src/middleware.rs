//! The request layers: request id and tracing span ([`trace`]); API-key
//! authentication, the per-key rate limit and the audit log line of
//! mutating calls ([`auth`]).

use crate::error::{ApiError, REQUEST_ID};
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Instant;
use tracing::Instrument;

/// Name of the key that authenticated a request (request extension).
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

/// Paths served without an API key (the E2B control plane under `/e2b`
/// checks keys itself, answering in E2B's error shape).
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/openapi.json" | "/docs" | "/redoc")
        || path.starts_with("/ui-assets/")
        || path == "/e2b"
        || path.starts_with("/e2b/")
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key, or an unknown one.
    NoKey,
    /// The key's rate limit; retry after this long.
    Limited(std::time::Duration),
}

/// Checks the API key of a request and takes one token of its rate limit;
/// answers the key's name.
///
/// # Errors
/// [`Denied`].
pub fn check_key(state: &AppState, headers: &axum::http::HeaderMap) -> Result<String, Denied> {
    let name = presented_key(headers, state.inner.api_key_header.as_deref())
        .and_then(|k| state.inner.keys.check(k))
        .ok_or(Denied::NoKey)?;
    state.inner.rate.acquire(&name).map_err(Denied::Limited)?;
    Ok(name)
}

/// The id in `<prefix>{id}/...`, for logs.
fn id_after<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// The sandbox id in `/sandboxes/{id}/...`, for logs.
fn sandbox_id_of(path: &str) -> Option<&str> {
    id_after(path, "/sandboxes/")
}

fn new_request_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// Outermost layer: gives every request an id (`X-Request-Id` response
/// header), a span with method, path and sandbox id, and logs its status
/// and latency when done. Its body drains itself if a handler answers
/// before reading it ([`crate::drain`]).
pub async fn trace(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let req = req.map(|b| axum::body::Body::new(crate::drain::DrainOnDrop::new(b)));
    let id = new_request_id();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        path = %path,
        sandbox_id = sandbox_id_of(&path).unwrap_or(""),
    );
    let start = Instant::now();
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    let status = resp.status().as_u16();
    state.count_response(status);
    let latency_ms = start.elapsed().as_millis() as u64;
    span.in_scope(|| tracing::info!(status, latency_ms, "request done"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Inside [`auth`]: a request for `/sandboxes/{id}/...` by a key that may
/// not see that sandbox (another key created it) is answered exactly as
/// for a sandbox that does not exist, so existence is not leaked.
pub async fn ownership(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let (Some(id), Some(caller)) = (
        id_after(req.uri().path(), "/workspaces/")
            .and_then(|id| id.parse::<locale2b_protocol::WorkspaceId>().ok()),
        req.extensions().get::<KeyName>(),
    ) {
        if let Ok(info) = state.sandboxes().get_workspace(&id).await {
            if !state.may_see(&caller.0, info.owner.as_deref()) {
                return ApiError::from(locale2b_manager::ManagerError::NotFound {
                    kind: "workspace",
                    id: id.to_string(),
                })
                .into_response();
            }
        }
        return next.run(req).await;
    }
    let (Some(id), Some(caller)) = (
        sandbox_id_of(req.uri().path())
            .and_then(|id| id.parse::<locale2b_protocol::SandboxId>().ok()),
        req.extensions().get::<KeyName>().cloned(),
    ) else {
        return next.run(req).await;
    };
    if let Ok(info) = state.sandboxes().get(&id).await {
        if !state.may_see(&caller.0, info.owner.as_deref()) {
            return ApiError::from(locale2b_manager::ManagerError::NotFound {
                kind: "sandbox",
                id: id.to_string(),
            })
            .into_response();
        }
    }
    next.run(req).await
}

/// The key presented in `X-API-Key`, the configured extra header
/// (`api_key_header`), or `Authorization: Bearer`.
fn presented_key<'r>(
    headers: &'r axum::http::HeaderMap,
    extra_header: Option<&str>,
) -> Option<&'r str> {
    for name in std::iter::once("x-api-key").chain(extra_header) {
        if let Some(v) = headers.get(name) {
            return v.to_str().ok().map(str::trim);
        }
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Why [`check_caller`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The source address failed authentication too often this minute;
    /// its key was not even looked at.
    Throttled(std::time::Duration),
    /// No key, or an unknown one (counted against the source address).
    NoKey,
    /// The key's rate limit.
    Limited(std::time::Duration),
}

/// The failed-authentication throttle of the source address, then
/// [`check_key`]: the key's name, or why not.
///
/// # Errors
/// [`Refused`].
pub fn check_caller(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &axum::http::HeaderMap,
) -> Result<String, Refused> {
    // A Unix-socket peer (tests, a local proxy) has no address: one source.
    let source = peer.map_or_else(|| "local".to_owned(), |a| a.ip().to_string());
    if let Some(retry_after) = state.inner.auth_failures.blocked(&source) {
        return Err(Refused::Throttled(retry_after));
    }
    match check_key(state, headers) {
        Ok(name) => Ok(name),
        Err(Denied::NoKey) => {
            state.inner.auth_failures.failed(&source);
            Err(Refused::NoKey)
        }
        Err(Denied::Limited(after)) => Err(Refused::Limited(after)),
    }
}

/// Authenticates (except public paths), applies the per-key rate limit and
/// writes the audit log line of mutating calls.
pub async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if is_public(&path) || (path == "/metrics" && state.metrics_public()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let peer = peer_of(&req);
    let call = Call {
        peer,
        method: method.as_str(),
        path: &path,
    };
    let (resp, key) = match check_caller(&state, peer, req.headers()) {
        Err(Refused::Throttled(retry_after)) => {
            let resp = ApiError::AuthThrottled { retry_after }.into_response();
            audit(&state, &call, None, resp.status().as_u16(), "throttled");
            return resp;
        }
        Err(Refused::NoKey) => (ApiError::Unauthorized.into_response(), None),
        Err(Refused::Limited(retry_after)) => {
            let key = presented_key(req.headers(), state.inner.api_key_header.as_deref())
                .and_then(|k| state.inner.keys.check(k));
            let resp = ApiError::RateLimited {
                per_sec: state.inner.rate.per_sec,
                retry_after,
            }
            .into_response();
            (resp, key)
        }
        Ok(name) => {
            req.extensions_mut().insert(KeyName(name.clone()));
            (next.run(req).await, Some(name))
        }
    };
    let status = resp.status().as_u16();
    if key.is_none() {
        audit(&state, &call, None, status, "unauthenticated");
    } else if mutating {
        let outcome = if resp.status().is_success() || resp.status().is_redirection() {
            "ok"
        } else {
            "error"
        };
        audit(&state, &call, key.as_deref(), status, outcome);
    }
    resp
}

/// The TCP peer of a request (`None` over a Unix socket).
pub(crate) fn peer_of(req: &Request) -> Option<std::net::SocketAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

/// The request an audit line is about.
pub(crate) struct Call<'a> {
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
}

/// One audit line: to the audit log file when one is set, and to the
/// tracing log (target `audit`).
pub(crate) fn audit(
    state: &AppState,
    call: &Call<'_>,
    key: Option<&str>,
    status: u16,
    outcome: &str,
) {
    let sandbox_id = sandbox_id_of(call.path)
        .or_else(|| id_after(call.path, "/e2b/sandboxes/"))
        .or_else(|| id_after(call.path, "/e2b/v2/sandboxes/"));
    let workspace_id = id_after(call.path, "/workspaces/");
    tracing::info!(
        target: "audit",
        key = key.unwrap_or("-"),
        method = %call.method,
        path = %call.path,
        sandbox_id = sandbox_id.unwrap_or(""),
        status,
        outcome,
        "api call"
    );
    if let Some(log) = state.audit_log() {
        log.write(&crate::audit::AuditRecord {
            time: crate::audit::now_rfc3339(),
            key,
            source: call.peer.map(|a| a.to_string()),
            method: call.method,
            route: call.path,
            sandbox_id,
            workspace_id,
            status,
            outcome,
            request_id: REQUEST_ID.try_with(Clone::clone).ok(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sandbox_id_from_path() {
        assert_eq!(sandbox_id_of("/sandboxes/sb-1/exec"), Some("sb-1"));
        assert_eq!(sandbox_id_of("/sandboxes/sb-1"), Some("sb-1"));
        assert_eq!(sandbox_id_of("/sandboxes"), None);
        assert_eq!(sandbox_id_of("/workspaces/x"), None);
    }
}
