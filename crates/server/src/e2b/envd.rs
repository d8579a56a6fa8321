//! What every envd request shares: which sandbox it is for (the
//! `E2b-Sandbox-Id` header), whether it may reach it (the sandbox's access
//! token in `X-Access-Token`), the user it acts as (`Authorization: Basic`,
//! else `user`) and how that user's relative paths resolve (from its home).

use super::connect::{Code, RpcError};
use super::{http_error, ENVD_PORT};
use crate::AppState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_manager::{GuestOps, SandboxInfo, SandboxStatus};
use locale2b_protocol::SandboxId;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The user commands and file operations act as when a request names none
/// (the E2B templates' default user).
pub const DEFAULT_USER: &str = "user";

/// Header naming the sandbox.
pub const SANDBOX_HEADER: &str = "e2b-sandbox-id";
/// Header naming the port inside the sandbox.
pub const PORT_HEADER: &str = "e2b-sandbox-port";
/// Header carrying the sandbox's access token.
pub const TOKEN_HEADER: &str = "x-access-token";

/// Why an envd request was refused before reaching the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such sandbox (or a malformed id).
    NotFound(String),
    /// Missing or wrong access token, or a bad user header.
    Unauthorized(String),
    /// The sandbox exists but is not running (paused, dead, changing state).
    NotRunning(String),
    /// A port other than envd's was asked for.
    Port(String),
}

impl Refusal {
    /// As a Connect error (RPC routes).
    pub fn rpc(&self) -> RpcError {
        match self {
            Self::NotFound(m) => RpcError::new(Code::NotFound, m.clone()),
            Self::Unauthorized(m) => RpcError::new(Code::Unauthenticated, m.clone()),
            Self::NotRunning(m) => RpcError::new(Code::FailedPrecondition, m.clone()),
            Self::Port(m) => RpcError::new(Code::Unavailable, m.clone()),
        }
    }

    /// As an HTTP error (`/files`, `/health`): `{code, message}`.
    pub fn http(&self) -> Response {
        match self {
            Self::NotFound(m) => http_error(StatusCode::NOT_FOUND, m),
            Self::Unauthorized(m) => http_error(StatusCode::UNAUTHORIZED, m),
            Self::NotRunning(m) | Self::Port(m) => http_error(StatusCode::BAD_GATEWAY, m),
        }
    }
}

/// One envd request's sandbox, guest and user.
#[derive(Clone)]
pub struct Envd {
    /// The sandbox.
    pub info: SandboxInfo,
    /// Its guest.
    pub guest: Arc<dyn GuestOps>,
    /// The user the request acts as.
    pub user: String,
}

impl std::fmt::Debug for Envd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envd")
            .field("sandbox_id", &self.info.sandbox_id)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The sandbox `id` names, if it is known.
///
/// # Errors
/// [`Refusal::NotFound`].
pub async fn sandbox(state: &AppState, id: &str) -> Result<SandboxInfo, Refusal> {
    let not_found = || Refusal::NotFound(format!("sandbox {id} not found"));
    let parsed: SandboxId = id.parse().map_err(|_| not_found())?;
    let info = state
        .sandboxes()
        .get(&parsed)
        .await
        .map_err(|_| not_found())?;
    if info.status == SandboxStatus::Dead {
        return Err(not_found());
    }
    Ok(info)
}

/// Whether `presented` is the sandbox's token (constant time); a sandbox
/// without a token (created with `secure: false`) accepts anything.
pub fn token_matches(info: &SandboxInfo, presented: Option<&str>) -> bool {
    match &info.access_token {
        None => true,
        Some(t) => presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(t.expose().as_bytes()))),
    }
}

/// The user named by `Authorization: Basic base64("<user>:")`.
///
/// # Errors
/// [`Refusal::Unauthorized`] for a header that is not such a value.
pub fn basic_user(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        Refusal::Unauthorized(
            "the Authorization header must be `Basic base64(<user>:)` naming the user to act as"
                .into(),
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let (scheme, rest) = v.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = B64.decode(rest.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let user = text.split(':').next().unwrap_or("");
    if user.is_empty() || user.contains(['/', '\0']) {
        return Err(bad());
    }
    Ok(Some(user.to_owned()))
}

impl Envd {
    /// The sandbox named by the headers, checked: known, envd's port, the
    /// right token, running.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub async fn from_headers(state: &AppState, headers: &HeaderMap) -> Result<Self, Refusal> {
        let id = headers
            .get(SANDBOX_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or_else(|| {
                Refusal::NotFound(format!("the {SANDBOX_HEADER} header names no sandbox"))
            })?;
        let info = sandbox(state, id).await?;
        let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
        if !token_matches(&info, token) {
            return Err(Refusal::Unauthorized(
                "unauthorized access: send the sandbox's envdAccessToken in X-Access-Token".into(),
            ));
        }
        if let Some(port) = headers.get(PORT_HEADER).and_then(|v| v.to_str().ok()) {
            if port.trim() != ENVD_PORT.to_string() {
                return Err(Refusal::Port(format!(
                    "port {} of sandbox {id} is not exposed: this server serves envd (port {ENVD_PORT}) only; forwarding other ports is not implemented yet",
                    port.trim()
                )));
            }
        }
        let user = basic_user(headers)?.unwrap_or_else(|| DEFAULT_USER.to_owned());
        Self::for_sandbox(state, info, user)
    }

    /// For an already checked sandbox.
    ///
    /// # Errors
    /// [`Refusal::NotRunning`] when it is not running.
    pub fn for_sandbox(state: &AppState, info: SandboxInfo, user: String) -> Result<Self, Refusal> {
        match info.status {
            SandboxStatus::Running => {}
            // Its first guest call resumes it (lifecycle.auto_resume).
            // A resume under way is waited for.
            SandboxStatus::Paused | SandboxStatus::Pausing | SandboxStatus::Resuming
                if info.auto_resume => {}
            SandboxStatus::Paused => {
                return Err(Refusal::NotRunning(format!(
                    "sandbox {} is paused; connect to it (Sandbox.connect) to resume it",
                    info.sandbox_id
                )))
            }
            other => {
                return Err(Refusal::NotRunning(format!(
                    "sandbox {} is {other}; retry in a moment",
                    info.sandbox_id
                )))
            }
        }
        let guest = state.sandboxes().guest(&info.sandbox_id);
        Ok(Self { info, guest, user })
    }

    /// The user's home directory.
    pub fn home(&self) -> String {
        home_of(&self.user)
    }

    /// A path as envd resolves it: empty = home, `~` and `~/…` from home,
    /// relative from home, absolute as given.
    ///
    /// # Errors
    /// `invalid_argument` for `~other` and NUL bytes.
    pub fn resolve(&self, path: &str) -> Result<String, RpcError> {
        resolve_for(&self.home(), path)
    }
}

/// The home directory of `user` in the guest image.
pub fn home_of(user: &str) -> String {
    if user == "root" {
        "/root".to_owned()
    } else {
        format!("/home/{user}")
    }
}

/// See [`Envd::resolve`].
///
/// # Errors
/// As [`Envd::resolve`].
pub fn resolve_for(home: &str, path: &str) -> Result<String, RpcError> {
    if path.contains('\0') {
        return Err(RpcError::invalid("the path contains a NUL byte"));
    }
    let joined = if path.is_empty() || path == "~" {
        home.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else if path.starts_with('~') {
        return Err(RpcError::invalid(format!(
            "{path}: only ~ and ~/ (the user's own home) are supported"
        )));
    } else if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{home}/{path}")
    };
    Ok(clean(&joined))
}

/// Removes `.`, `..` and repeated slashes from an absolute path.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn paths_resolve_like_envd() {
        let home = "/home/user";
        assert_eq!(resolve_for(home, "").unwrap(), "/home/user");
        assert_eq!(resolve_for(home, "~").unwrap(), "/home/user");
        assert_eq!(resolve_for(home, "~/a/b").unwrap(), "/home/user/a/b");
        assert_eq!(resolve_for(home, "a/./b/../c").unwrap(), "/home/user/a/c");
        assert_eq!(resolve_for(home, "/tmp//x/").unwrap(), "/tmp/x");
        assert_eq!(resolve_for(home, "/../..").unwrap(), "/");
        assert_eq!(
            resolve_for(home, "~root/x").unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(home_of("root"), "/root");
    }

    #[test]
    fn the_user_comes_from_basic_auth() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cm9vdDo="),
        );
        assert_eq!(basic_user(&h).unwrap().as_deref(), Some("root"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(matches!(basic_user(&h), Err(Refusal::Unauthorized(_))));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert!(basic_user(&h).is_err());
    }
}
