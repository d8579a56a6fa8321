//! The E2B-compatible surface: the official `e2b` SDKs work against this
//! server unchanged (`docs/e2b.md` says how to point them here and what is
//! supported). It only translates: every call becomes one of the same
//! manager operations the native API uses.
//!
//! | module | serves |
//! |---|---|
//! | [`control`] | the control plane under `/e2b` (`E2B_API_URL`), API key in `X-API-KEY` |
//! | [`process`] | envd's `process.Process` Connect service |
//! | [`filesystem`] | envd's `filesystem.Filesystem` Connect service |
//! | [`files`] | envd's `/files` downloads and uploads (signed links too), `/health` |
//! | [`envd`] | which sandbox an envd request is for, its token, user and paths |
//! | [`connect`] | the Connect protocol with the JSON codec |
//! | [`pump`] | stream answers produced by a task, with keepalives |
//! | [`spec`] | the route table and `docs/e2b-openapi.json` |
//!
//! envd requests arrive at the server's root (`E2B_SANDBOX_URL` is the
//! bare origin) carrying `E2b-Sandbox-Id`; [`dispatch`] sends every request
//! with that header, and every `/files` request (signed links carry no
//! header), to [`envd_router`] before the native API sees them.

// Handlers answer early with a ready `Response` as their error; boxing it
// would only add noise.
#![allow(clippy::result_large_err)]

pub mod connect;
pub mod control;
pub mod envd;
pub mod files;
pub mod filesystem;
pub mod process;
pub mod pump;
pub mod spec;

use crate::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use locale2b_protocol::SandboxId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tower::ServiceExt;

/// The port envd listens on inside an E2B sandbox; the SDK names it in
/// `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;

/// The envd version reported to SDKs: the newest whose features (as the
/// SDKs gate them) this server implements.
pub const ENVD_VERSION: &str = "0.6.4";

/// `clientID` of every sandbox (the SDK requires the field, never uses it).
pub const CLIENT_ID: &str = "locale2b";

/// State of the E2B surface that is not the manager's.
#[derive(Debug, Default)]
pub struct E2bState {
    /// Polling watchers (`CreateWatcher`).
    pub watchers: filesystem::Watchers,
    /// Creates by `Idempotency-Key`: the sandbox the first one made.
    #[allow(clippy::type_complexity)]
    pub idempotency: Mutex<HashMap<String, (Arc<tokio::sync::Mutex<Option<SandboxId>>>, Instant)>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error of envd's HTTP routes and the control plane:
/// `{"code": <status>, "message": ...}`.
pub fn http_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::json!({"code": status.as_u16(), "message": message}).to_string(),
    )
        .into_response()
}

/// envd's routes.
pub fn envd_router(state: AppState) -> Router {
    let max_upload = usize::try_from(state.max_upload_bytes()).unwrap_or(usize::MAX);
    Router::new()
        .route("/process.Process/{method}", post(process::call))
        .route("/filesystem.Filesystem/{method}", post(filesystem::call))
        .route(
            "/files",
            get(files::download)
                .post(files::upload)
                .layer(DefaultBodyLimit::max(
                    max_upload.saturating_add(1024 * 1024),
                )),
        )
        .route("/health", get(files::health))
        .fallback(no_envd_route)
        .with_state(state)
}

async fn no_envd_route(req: Request) -> Response {
    let path = req.uri().path();
    let rpc = path.trim_start_matches('/').split('/').count() == 2 && path.contains('.');
    if rpc {
        connect::RpcError::new(
            connect::Code::Unimplemented,
            format!("envd has no service method {path}"),
        )
        .into_response()
    } else {
        http_error(
            StatusCode::NOT_FOUND,
            &format!("envd has no route {} {path}", req.method()),
        )
    }
}

/// Whether a request is for envd (see the module docs).
fn for_envd(req: &Request) -> bool {
    req.headers().contains_key(envd::SANDBOX_HEADER) || req.uri().path() == "/files"
}

/// Sends envd requests to [`envd_router`], everything else on.
pub async fn dispatch(State(envd): State<Router>, req: Request, next: Next) -> Response {
    if for_envd(&req) {
        match envd.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    } else {
        next.run(req).await
    }
}
