//! The REST API of locale2b (axum).
//!
//! Handlers translate HTTP requests into calls on the
//! [`SandboxManager`]; the manager decides, and [`ApiError`]'s single
//! `IntoResponse` is the only place that chooses a status code. The contract
//! (every route, body, status and the semantics of retries and timeouts) is
//! `docs/api.md`; the machine-readable form is `docs/openapi.json`, generated
//! from this crate (see [`openapi::openapi_json`]).
//!
//! Layers, outermost first: request id + tracing span ([`middleware::trace`]),
//! API key + per-key rate limit + audit log ([`middleware::auth`]), body size
//! limit, then the route.
//!
//! ```no_run
//! # async fn run(manager: std::sync::Arc<locale2b_manager::SandboxManager>) -> std::io::Result<()> {
//! let keys = locale2b_server::load_or_create_api_keys(manager.config()).expect("keys");
//! if let Some(path) = keys.stored_at() {
//!     println!("API key stored in {}", path.display());
//! }
//! let state = locale2b_server::AppState::new(manager, keys);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! locale2b_server::serve(listener, state, std::future::pending::<()>()).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod handlers;
pub mod keys;
pub mod middleware;
pub mod models;
pub mod openapi;

pub use error::{ApiError, ErrorDetail, ErrorResponse};
pub use keys::{load_or_create_api_keys, ApiKeys, KeyError, KeySource, GENERATED_KEY_FILE};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use locale2b_manager::SandboxManager;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shared state of every handler: the manager, the API keys, the rate
/// limiter and the UI asset directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    manager: Arc<SandboxManager>,
    keys: ApiKeys,
    rate: middleware::RateLimiter,
    ui_dir: PathBuf,
}

impl AppState {
    /// State for `manager`, accepting `keys`. Limits (rate, body and upload
    /// sizes, exec timeouts, memory and vCPU ranges) come from
    /// `manager.config()`; the UI assets are looked up in `<base_dir>/ui`.
    pub fn new(manager: Arc<SandboxManager>, keys: ApiKeys) -> Self {
        let config = manager.config();
        let rate = middleware::RateLimiter::new(config.rate_limit_per_sec);
        let ui_dir = config.base_dir.join("ui");
        Self {
            inner: Arc::new(Inner {
                manager,
                keys,
                rate,
                ui_dir,
            }),
        }
    }

    /// The sandbox manager.
    pub fn manager(&self) -> &Arc<SandboxManager> {
        &self.inner.manager
    }

    /// Directory of the Swagger UI / ReDoc assets (`<base_dir>/ui`).
    pub fn ui_dir(&self) -> &Path {
        &self.inner.ui_dir
    }
}

/// Extra room on top of `max_upload_bytes` for multipart headers and
/// boundaries.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;

/// The complete router with every route and layer.
pub fn router(state: AppState) -> Router {
    use handlers as h;
    let config = state.manager().config();
    let max_body = config.max_body_bytes;
    let max_upload = usize::try_from(config.max_upload_bytes.saturating_add(MULTIPART_OVERHEAD))
        .unwrap_or(usize::MAX);
    let ports = get(h::ports_not_implemented)
        .post(h::ports_not_implemented)
        .delete(h::ports_not_implemented);
    Router::new()
        .route("/health", get(h::health))
        .route("/openapi.json", get(openapi::spec))
        .route("/docs", get(openapi::swagger_page))
        .route("/redoc", get(openapi::redoc_page))
        .route("/ui-assets/{*path}", get(openapi::ui_asset))
        .route("/sandboxes", post(h::create_sandbox).get(h::list_sandboxes))
        .route(
            "/sandboxes/{id}",
            get(h::get_sandbox).delete(h::destroy_sandbox),
        )
        .route("/sandboxes/{id}/pause", post(h::pause_sandbox))
        .route("/sandboxes/{id}/resume", post(h::resume_sandbox))
        .route("/sandboxes/{id}/exec", post(h::exec))
        .route("/sandboxes/{id}/files/write", post(h::write_file))
        .route("/sandboxes/{id}/files/read", get(h::read_file))
        .route("/sandboxes/{id}/files/list", get(h::list_files))
        .route("/sandboxes/{id}/files/stat", get(h::stat))
        .route("/sandboxes/{id}/files/mkdir", post(h::mkdir))
        .route(
            "/sandboxes/{id}/files",
            axum::routing::delete(h::delete_file),
        )
        .route("/sandboxes/{id}/files/delete", post(h::delete_file_post))
        .route(
            "/sandboxes/{id}/files/upload",
            post(h::upload).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/sandboxes/{id}/ports", ports.clone())
        .route("/sandboxes/{id}/ports/{*rest}", ports)
        .route("/workspaces", get(h::list_workspaces))
        .route(
            "/workspaces/{id}",
            get(h::get_workspace).delete(h::delete_workspace),
        )
        .fallback(h::no_route)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ))
        .layer(axum::middleware::from_fn(middleware::trace))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets
/// in-flight requests finish (graceful shutdown).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
