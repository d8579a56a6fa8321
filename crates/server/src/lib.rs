//! The REST API of locale2b (axum).
//!
//! Handlers translate HTTP requests into calls on a
//! [`SandboxService`] (the manager, or a test double); the manager decides,
//! and [`ApiError`]'s single `IntoResponse` is the only place that chooses a
//! status code. The contract (every route, body, status and the semantics
//! of retries and timeouts) is `docs/api.md`; the machine-readable form is
//! `docs/openapi.json`, generated from this crate (see
//! [`openapi::openapi_json`]).
//!
//! | module | owns |
//! |---|---|
//! | [`handlers`] | one module per resource: HTTP ↔ domain translation |
//! | [`models`] | request and response bodies, one module per resource |
//! | [`extract`] | extractors whose rejections use the error shape |
//! | [`error`] | [`ApiError`] and the one status mapping |
//! | [`middleware`] | request id + span, API key + rate limit + audit line |
//! | [`rate`] | the per-key token buckets, the failed-authentication throttle |
//! | [`audit`] | the audit log file (JSON lines, rotated by size) |
//! | [`keys`] | loading and checking API keys |
//! | [`openapi`] | the OpenAPI document, Swagger UI and ReDoc pages |
//!
//! Layers, outermost first: request id + tracing span ([`middleware::trace`]),
//! API key + per-key rate limit + audit log ([`middleware::auth`]), body size
//! limit, then the route.
//!
//! ```no_run
//! # async fn run(manager: std::sync::Arc<locale2b_manager::SandboxManager>) -> std::io::Result<()> {
//! let server = locale2b_config::ServerConfig::default();
//! let keys = locale2b_server::load_or_create_api_keys(&server, &manager.config().base_dir)
//!     .expect("keys");
//! if let Some(path) = keys.stored_at() {
//!     println!("API key stored in {}", path.display());
//! }
//! let state = locale2b_server::AppState::new(manager, keys, &server);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! locale2b_server::serve(listener, state, std::future::pending::<()>()).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod audit;
pub mod drain;
pub mod e2b;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod keys;
pub mod middleware;
pub mod models;
pub mod openapi;
pub mod rate;
pub mod route_host;

pub use error::{ApiError, ErrorDetail, ErrorResponse};
pub use keys::{
    generate_key, key_file_line, load_or_create_api_keys, ApiKeys, KeyEntry, KeyError, KeySource,
    GENERATED_KEY_FILE,
};
pub use locale2b_config::ServerConfig;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use locale2b_manager::SandboxService;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Shared state of every handler: the sandbox service, the API keys, the
/// rate limiter and the server's settings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sandboxes: Arc<dyn SandboxService>,
    keys: ApiKeys,
    rate: rate::RateLimiter,
    api_key_header: Option<String>,
    max_body_bytes: usize,
    max_upload_bytes: u64,
    ui_dir: Option<PathBuf>,
    e2b_enabled: bool,
    e2b_allow_insecure: bool,
    metrics_public: bool,
    ports_domain: String,
    admin_keys: Vec<String>,
    e2b: e2b::E2bState,
    auth_failures: rate::AuthFailures,
    audit: std::sync::OnceLock<audit::AuditLog>,
    /// Responses sent, by status class (1xx … 5xx).
    responses: [std::sync::atomic::AtomicU64; 5],
}

impl AppState {
    /// State serving `sandboxes`, accepting `keys`, with the limits and
    /// the UI asset directory of `server` (no local UI assets when
    /// `server.ui_dir` is unset: the pages then use the public CDN).
    pub fn new(sandboxes: Arc<dyn SandboxService>, keys: ApiKeys, server: &ServerConfig) -> Self {
        sandboxes.set_quota_source(Arc::new(keys.clone()));
        Self {
            inner: Arc::new(Inner {
                sandboxes,
                keys,
                rate: rate::RateLimiter::new(server.rate_limit_per_sec),
                api_key_header: server
                    .api_key_header
                    .as_ref()
                    .map(|h| h.to_ascii_lowercase()),
                max_body_bytes: server.max_body_bytes,
                max_upload_bytes: server.max_upload_bytes,
                ui_dir: server.ui_dir.clone(),
                e2b_enabled: server.e2b,
                e2b_allow_insecure: server.e2b_allow_insecure,
                metrics_public: server.metrics_public,
                ports_domain: server
                    .ports_domain
                    .trim()
                    .trim_matches('.')
                    .to_ascii_lowercase(),
                admin_keys: server
                    .admin_keys
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect(),
                e2b: e2b::E2bState::default(),
                auth_failures: rate::AuthFailures::new(server.auth_failures_per_min),
                audit: std::sync::OnceLock::new(),
                responses: Default::default(),
            }),
        }
    }

    /// Writes the audit lines of this state (every clone of it) to `log`
    /// from now on; without it they only go to the tracing log.
    ///
    /// # Errors
    /// Gives `log` back when an audit log is already set.
    pub fn set_audit_log(&self, log: audit::AuditLog) -> Result<(), audit::AuditLog> {
        self.inner.audit.set(log)
    }

    /// The audit log, when one is set.
    pub fn audit_log(&self) -> Option<&audit::AuditLog> {
        self.inner.audit.get()
    }

    /// Counts a response of status `status` (`locale2b_http_responses_total`).
    pub fn count_response(&self, status: u16) {
        if let Some(c) = self
            .inner
            .responses
            .get(usize::from(status / 100).wrapping_sub(1))
        {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The server's own metrics in the Prometheus text format.
    pub fn http_metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP locale2b_http_responses_total HTTP responses sent, by status class.\n# TYPE locale2b_http_responses_total counter\n",
        );
        for (i, c) in self.inner.responses.iter().enumerate() {
            out.push_str(&format!(
                "locale2b_http_responses_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                c.load(std::sync::atomic::Ordering::Relaxed)
            ));
        }
        out
    }

    /// The sandbox service.
    pub fn sandboxes(&self) -> &Arc<dyn SandboxService> {
        &self.inner.sandboxes
    }

    /// Directory of the Swagger UI / ReDoc assets, when configured.
    pub fn ui_dir(&self) -> Option<&Path> {
        self.inner.ui_dir.as_deref()
    }

    /// Largest JSON request body.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Largest multipart upload.
    pub fn max_upload_bytes(&self) -> u64 {
        self.inner.max_upload_bytes
    }

    /// State of the E2B surface.
    pub fn e2b(&self) -> &e2b::E2bState {
        &self.inner.e2b
    }

    /// Whether `/metrics` is served without an API key.
    pub fn metrics_public(&self) -> bool {
        self.inner.metrics_public
    }

    /// The Host header that routes to exposed port `port` of `id`, when
    /// Host-header routing is on (`ports_domain` set).
    pub fn route_host(&self, id: &locale2b_protocol::SandboxId, port: u16) -> Option<String> {
        let d = &self.inner.ports_domain;
        (!d.is_empty()).then(|| format!("{port}-{id}.{d}"))
    }

    /// Whether key `caller` may see a sandbox owned by `owner`: its own,
    /// unowned ones, and all of them for an admin key.
    pub fn may_see(&self, caller: &str, owner: Option<&str>) -> bool {
        owner.is_none_or(|o| o == caller) || self.is_admin(caller)
    }

    /// Whether key `caller` has the admin scope (`LOCALE2B_ADMIN_KEYS`, or
    /// `admin=true` in the keys file).
    pub fn is_admin(&self, caller: &str) -> bool {
        self.inner.admin_keys.iter().any(|a| a == caller) || self.inner.keys.is_admin(caller)
    }

    /// The domain of Host-header routing ("" = off).
    pub fn ports_domain(&self) -> &str {
        &self.inner.ports_domain
    }

    /// Whether E2B clients may create sandboxes without an envd token.
    pub fn e2b_allow_insecure(&self) -> bool {
        self.inner.e2b_allow_insecure
    }
}

/// Extra room on top of `max_upload_bytes` for multipart headers and
/// boundaries.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;

/// The complete router with every route and layer.
pub fn router(state: AppState) -> Router {
    use handlers as h;
    let max_body = state.inner.max_body_bytes;
    let max_upload = usize::try_from(state.max_upload_bytes().saturating_add(MULTIPART_OVERHEAD))
        .unwrap_or(usize::MAX);
    let e2b_enabled = state.inner.e2b_enabled;
    let mut app = Router::new()
        .route("/health", get(h::health))
        .route("/metrics", get(h::metrics))
        .route("/sandboxes/{id}/metrics", get(h::sandbox_metrics))
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
        .route("/sandboxes/{id}/fork", post(h::fork_sandbox))
        .route("/sandboxes/{id}/resume", post(h::resume_sandbox))
        .route("/sandboxes/{id}/timeout", post(h::set_timeout))
        .route("/sandboxes/{id}/network", put(h::set_network))
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
            "/sandboxes/{id}/files/content",
            get(h::get_content)
                .put(h::put_content)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route("/sandboxes/{id}/files/checksum", get(h::checksum))
        .route(
            "/sandboxes/{id}/files/upload",
            post(h::upload).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/sandboxes/{id}/processes",
            post(h::start_process).get(h::list_processes),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}",
            get(h::get_process).delete(h::remove_process),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}/output",
            get(h::process_output),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}/stream",
            get(h::process_stream),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}/stdin",
            post(h::process_stdin),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}/signal",
            post(h::process_signal),
        )
        .route(
            "/sandboxes/{id}/processes/{pid}/resize",
            post(h::process_resize),
        )
        .route("/sandboxes/{id}/processes/{pid}/pty", get(h::process_pty))
        .route("/sandboxes/{id}/ports", get(h::list_ports))
        .route("/sandboxes/{id}/ports/expose", post(h::expose_port))
        .route(
            "/sandboxes/{id}/ports/{port}",
            axum::routing::delete(h::close_port),
        )
        .route("/workspaces", get(h::list_workspaces))
        .route(
            "/workspaces/{id}",
            get(h::get_workspace).delete(h::delete_workspace),
        );
    if e2b_enabled {
        app = app.nest("/e2b", e2b::control::router(state.clone()));
    }
    let app = app
        .fallback(h::no_route)
        .method_not_allowed_fallback(h::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::ownership,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::auth,
        ));
    let app = if e2b_enabled {
        app.layer(axum::middleware::from_fn_with_state(
            e2b::envd_router(state.clone()),
            e2b::dispatch,
        ))
    } else {
        app
    };
    app.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        route_host::route,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::trace,
    ))
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
    // The peer address reaches the audit log and the failed-authentication
    // throttle.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
