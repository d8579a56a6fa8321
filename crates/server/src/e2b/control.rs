//! E2B's control plane (the REST API at `E2B_API_URL`), under `/e2b`:
//! create, connect (resumes), info, list with filters and pages, timeout,
//! pause, kill, metrics. Bodies and statuses are the ones E2B's SDKs
//! expect (create answers 201, kill/pause/timeout 204, errors
//! `{code, message}`); every call is one of the manager's operations.

use super::envd::DEFAULT_USER;
use super::{lock, CLIENT_ID, ENVD_VERSION};
use crate::middleware::{audit, check_caller, Call, Refused};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use locale2b_manager::network::{NetworkMode, NetworkPolicy};
use locale2b_manager::{
    CreateSandbox, ExecSpec, ManagerError, OnTimeout, RouteAllPorts, SandboxInfo, SandboxStatus,
};
use locale2b_protocol::SandboxId;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// Lifetime of a sandbox whose create names none (E2B's default).
pub const DEFAULT_TIMEOUT_SEC: u64 = 300;
/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);
/// `endAt` of a sandbox without an end (E2B has no such sandboxes; ones
/// made through the native API may have none).
const NO_END: &str = "9999-12-31T23:59:59Z";

/// An error in E2B's shape: `{"code": <status>, "message": ...}`.
#[derive(Debug)]
pub struct E2bError {
    status: StatusCode,
    message: String,
    retry_after: Option<Duration>,
}

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ManagerError> for E2bError {
    fn from(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::InvalidInput(_) | ManagerError::TooLarge(_) => StatusCode::BAD_REQUEST,
            ManagerError::NotFound { .. } => StatusCode::NOT_FOUND,
            ManagerError::Conflict(_) | ManagerError::SnapshotInvalid(_) => StatusCode::CONFLICT,
            ManagerError::Unsupported(_) | ManagerError::BackendUnsupported(_) => {
                StatusCode::NOT_IMPLEMENTED
            }
            ManagerError::AtCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // E2B answers its concurrent-sandbox limit with 429 (the SDKs
            // raise RateLimitException for it).
            ManagerError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
            ManagerError::NetworkUnavailable(_) => StatusCode::FORBIDDEN,
            ManagerError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ManagerError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ManagerError::Vm { .. } => StatusCode::BAD_GATEWAY,
            ManagerError::Guest { .. } | ManagerError::Internal { .. } => {
                tracing::warn!(error = %e, "E2B control call failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let retry_after = match &e {
            ManagerError::AtCapacity { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        Self {
            status,
            message: e.to_string(),
            retry_after,
        }
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let mut resp = super::http_error(self.status, &self.message);
        if let Some(after) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

type E2bResult = Result<Response, E2bError>;

/// The routes, mounted under `/e2b` (the API key layer is [`auth`]).
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/network", put(update_network))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect_call))
        .route("/v2/sandboxes/{id}/connect", post(connect_call))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::middleware::from_fn_with_state(state, auth))
}

async fn no_route(req: Request) -> E2bError {
    E2bError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no E2B API route {} {}; docs/e2b.md lists what is served",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn no_method(req: Request) -> E2bError {
    E2bError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The API key (`X-API-KEY`, like every key of the native API), the
/// failed-authentication throttle, the per-key rate limit, ownership (a
/// sandbox another key created is 404) and the audit line of mutating
/// calls and refused keys, with E2B's error shape.
pub async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let full_path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.path().to_owned());
    let peer = crate::middleware::peer_of(&req);
    let call = Call {
        peer,
        method: method.as_str(),
        path: &full_path,
    };
    let key = match check_caller(&state, peer, req.headers()) {
        Ok(k) => k,
        Err(refused) => {
            let (status, message, outcome, after) = match refused {
                Refused::Throttled(after) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications from this address; retry after the Retry-After delay",
                    "throttled",
                    Some(after),
                ),
                Refused::NoKey => (
                    StatusCode::UNAUTHORIZED,
                    "invalid or missing API key: send it in X-API-KEY (E2B_API_KEY)",
                    "unauthenticated",
                    None,
                ),
                Refused::Limited(after) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate limit exceeded; retry after the Retry-After delay",
                    "error",
                    Some(after),
                ),
            };
            let mut e = E2bError::new(status, message);
            e.retry_after = after;
            let resp = e.into_response();
            if outcome != "error" || method != Method::GET {
                audit(&state, &call, None, status.as_u16(), outcome);
            }
            return resp;
        }
    };
    let id = sandbox_id_in(req.uri().path());
    if let Some(id) = id.as_deref().and_then(|i| i.parse::<SandboxId>().ok()) {
        if let Ok(info) = state.sandboxes().get(&id).await {
            if !state.may_see(&key, info.owner.as_deref()) {
                let resp = E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
                    .into_response();
                if method != Method::GET {
                    audit(&state, &call, Some(&key), 404, "error");
                }
                return resp;
            }
        }
    }
    req.extensions_mut()
        .insert(crate::middleware::KeyName(key.clone()));
    let resp = next.run(req).await;
    if method != Method::GET {
        let status = resp.status();
        let outcome = if status.is_success() { "ok" } else { "error" };
        audit(&state, &call, Some(&key), status.as_u16(), outcome);
    }
    resp
}

/// The sandbox id of an E2B control path (`/sandboxes/{id}/...`,
/// `/v2/sandboxes/{id}/...`).
fn sandbox_id_in(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/v2/sandboxes/")
        .or_else(|| path.strip_prefix("/sandboxes/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// A JSON body; an empty body is the default value.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, E2bError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| E2bError::bad(format!("invalid JSON body: {e}")))
}

fn sandbox_id(id: &str) -> Result<SandboxId, E2bError> {
    id.parse()
        .map_err(|_| E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AutoResume {
    enabled: bool,
}

/// `NewSandbox` (v1) and `NewSandboxV2`: the fields read; the others are
/// refused when set (see `unsupported`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    auto_pause: Option<bool>,
    auto_pause_memory: Option<bool>,
    auto_resume: Option<AutoResume>,
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    mcp: Option<Value>,
    network: Option<Value>,
    volume_mounts: Option<Vec<Value>>,
    iam: Option<Value>,
}

impl NewSandbox {
    /// A clear refusal for what this server cannot do yet (instead of
    /// quietly running a sandbox without it).
    fn unsupported(&self) -> Option<String> {
        if self.mcp.is_some() {
            return Some("the MCP gateway (mcp) is not supported by this server".into());
        }
        if self.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
            return Some("volume mounts (volumeMounts) are not supported by this server".into());
        }
        if self.iam.is_some() {
            return Some("IAM tokens (iam) are not supported by this server".into());
        }
        None
    }
}

/// E2B's `network` at create, and the body of its update
/// (`PUT /sandboxes/{id}/network`). `dnsServers` and `httpsPorts` are
/// accepted and have no effect (a sandbox asks its own resolver).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct E2bNetwork {
    allow_out: Vec<String>,
    deny_out: Vec<String>,
    allow_public_traffic: Option<bool>,
    mask_request_host: Option<String>,
    egress_proxy: Option<Value>,
    rules: Option<Map<String, Value>>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
}

impl E2bNetwork {
    /// The locale2b policy of these rules (see [`e2b_policy`]).
    fn policy(self, allow_internet_access: Option<bool>) -> Result<NetworkPolicy, String> {
        if self.mask_request_host.is_some() {
            return Err("network.maskRequestHost is not supported by this server".into());
        }
        if self.egress_proxy.as_ref().is_some_and(|p| !p.is_null()) {
            return Err("network.egressProxy is not supported by this server".into());
        }
        if self.rules.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(
                "network.rules (request transforms) are not supported by this server".into(),
            );
        }
        // No egress rules (e.g. only allowPublicTraffic): no network, as
        // when `network` is absent.
        let no_rules = self.allow_out.is_empty() && self.deny_out.is_empty();
        if no_rules || allow_internet_access.or(self.allow_internet_access) == Some(false) {
            return Ok(NetworkPolicy::default());
        }
        let everything = self.deny_out.iter().any(|d| d == "0.0.0.0/0");
        Ok(if everything {
            NetworkPolicy {
                mode: NetworkMode::Allowlist,
                allow: self.allow_out,
                deny: Vec::new(),
            }
        } else {
            NetworkPolicy {
                mode: NetworkMode::Full,
                allow: self.allow_out,
                deny: self.deny_out,
            }
        })
    }
}

/// E2B's egress settings as a locale2b policy: E2B allows everything but
/// `denyOut`, and `allowOut` wins over it; `denyOut: ["0.0.0.0/0"]` makes
/// it an allowlist of `allowOut`. `allow_internet_access: false` is no
/// network. Without `network`, no network either: locale2b's default (the
/// SDK sends `allow_internet_access: true` on every create).
///
/// Every port of the sandbox is routed by Host header, as E2B routes them;
/// `allowPublicTraffic: false` makes each routed request need the
/// sandbox's traffic token.
fn e2b_policy(req: &NewSandbox) -> Result<(Option<NetworkPolicy>, RouteAllPorts), String> {
    let Some(raw) = &req.network else {
        return Ok((None, RouteAllPorts::new(false)));
    };
    let net: E2bNetwork = serde_json::from_value(raw.clone())
        .map_err(|e| format!("network is not E2B's network configuration: {e}"))?;
    let routing = RouteAllPorts::new(net.allow_public_traffic == Some(false));
    Ok((Some(net.policy(req.allow_internet_access)?), routing))
}

/// `PUT /sandboxes/{id}/network`: E2B's `update_network`, the sandbox's
/// egress rules replaced (by the same mapping as at create).
async fn update_network(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> E2bResult {
    let req: E2bNetwork = body(&bytes)?;
    if req.allow_public_traffic.is_some() {
        return Err(E2bError::bad(
            "network.allowPublicTraffic is set when the sandbox is created and cannot be changed",
        ));
    }
    let policy = req.policy(None).map_err(E2bError::bad)?;
    state
        .sandboxes()
        .set_network(&sandbox_id(&id)?, policy)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The template name E2B clients see: the default template is `base`.
fn e2b_template(state: &AppState, template: &str) -> String {
    if template == state.sandboxes().limits().default_template {
        "base".into()
    } else {
        template.to_owned()
    }
}

/// The `domain` E2B clients build `get_host` names under:
/// `<ports_domain>:<port>` with the port the client reached this server
/// on (from `Host`), so `<port>-<sandbox_id>.<domain>` is a name the
/// server routes. Null when Host-header routing is off.
fn e2b_domain(state: &AppState, headers: &HeaderMap) -> Value {
    let domain = state.ports_domain();
    if domain.is_empty() {
        return Value::Null;
    }
    let port = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    Value::String(match port {
        Some(p) => format!("{domain}:{p}"),
        None => domain.to_owned(),
    })
}

/// The `Sandbox` answer of create and connect.
fn sandbox_json(state: &AppState, headers: &HeaderMap, info: &SandboxInfo) -> Value {
    let template = e2b_template(state, &info.template);
    json!({
        "templateID": template,
        "alias": template,
        "sandboxID": info.sandbox_id.as_str(),
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": info.access_token.as_ref().map(|t| t.expose().to_owned()),
        "trafficAccessToken": traffic_token(info),
        "domain": e2b_domain(state, headers),
    })
}

/// E2B's two states; `None` for a sandbox E2B would not show (dead).
fn state_of(status: SandboxStatus) -> Option<&'static str> {
    match status {
        SandboxStatus::Starting
        | SandboxStatus::Running
        | SandboxStatus::Pausing
        | SandboxStatus::Stopping => Some("running"),
        SandboxStatus::Paused | SandboxStatus::Resuming => Some("paused"),
        SandboxStatus::Dead => None,
    }
}

fn end_at(info: &SandboxInfo) -> String {
    match (&info.end_at, info.status) {
        (Some(end), _) => end.clone(),
        (None, SandboxStatus::Paused) => info.updated_at.clone(),
        _ => NO_END.to_owned(),
    }
}

/// `ListedSandbox`, and with `detail` the rest of `SandboxDetail`.
fn listed_json(
    state: &AppState,
    headers: Option<&HeaderMap>,
    info: &SandboxInfo,
    detail: bool,
) -> Value {
    let template = e2b_template(state, &info.template);
    let mut v = json!({
        "templateID": template,
        "alias": template,
        "sandboxID": info.sandbox_id.as_str(),
        "clientID": CLIENT_ID,
        "startedAt": info.created_at,
        "endAt": end_at(info),
        "cpuCount": info.vcpu_count,
        "memoryMB": info.memory_mb,
        "diskSizeMB": info.disk_size_mb.unwrap_or(state.sandboxes().limits().disk_size_mb),
        "metadata": info.metadata,
        "state": state_of(info.status).unwrap_or("running"),
        "envdVersion": ENVD_VERSION,
    });
    if detail {
        v["envdAccessToken"] = info
            .access_token
            .as_ref()
            .map_or(Value::Null, |t| Value::String(t.expose().to_owned()));
        v["domain"] = headers.map_or(Value::Null, |h| e2b_domain(state, h));
        v["trafficAccessToken"] = traffic_token(info);
        v["allowInternetAccess"] = Value::Bool(info.network.networked());
        v["lifecycle"] = json!({
            "autoResume": info.auto_resume,
            "onTimeout": match info.on_timeout { OnTimeout::Pause => "pause", OnTimeout::Destroy => "kill" },
        });
    }
    v
}

type Caller = axum::Extension<crate::middleware::KeyName>;

async fn create_v1(
    State(state): State<AppState>,
    axum::Extension(caller): Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> E2bResult {
    create(state, caller.0, headers, bytes, false).await
}

async fn create_v2(
    State(state): State<AppState>,
    axum::Extension(caller): Caller,
    headers: HeaderMap,
    bytes: Bytes,
) -> E2bResult {
    create(state, caller.0, headers, bytes, true).await
}

async fn create(
    state: AppState,
    caller: String,
    headers: HeaderMap,
    bytes: Bytes,
    v2: bool,
) -> E2bResult {
    let req: NewSandbox = body(&bytes)?;
    if let Some(m) = req.unsupported() {
        return Err(E2bError::bad(m));
    }
    // v2 has no `secure`: every sandbox's envd is secured.
    let secure = v2 || req.secure.unwrap_or(true);
    if !secure && !state.e2b_allow_insecure() {
        return Err(E2bError::bad(
            "this server requires secure sandboxes (envd access token); create with secure=True, or set LOCALE2B_E2B_ALLOW_INSECURE=true on the server",
        ));
    }
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SEC);
    if timeout == 0 {
        return Err(E2bError::bad("timeout must be at least 1 second"));
    }
    let _ = req.auto_pause_memory;
    let (network, route_all_ports) = e2b_policy(&req).map_err(E2bError::bad)?;
    let template_id = req.template_id.clone().unwrap_or_else(|| "base".into());
    let template = (template_id != "base").then(|| template_id.clone());
    let mut env = BTreeMap::from([
        ("E2B_SANDBOX".to_owned(), "true".to_owned()),
        ("E2B_TEMPLATE_ID".to_owned(), template_id.clone()),
    ]);
    env.extend(req.env_vars.clone().unwrap_or_default());
    let create = CreateSandbox {
        template,
        env,
        timeout_sec: Some(timeout),
        on_timeout: Some(if req.auto_pause.unwrap_or(false) {
            OnTimeout::Pause
        } else {
            OnTimeout::Destroy
        }),
        metadata: req.metadata.clone().unwrap_or_default(),
        access_token: secure.then(locale2b_manager::new_token),
        auto_resume: req.auto_resume.as_ref().map(|a| a.enabled),
        owner: Some(caller.clone()),
        network,
        route_all_ports: Some(route_all_ports),
        ..CreateSandbox::default()
    };
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let info = match idem {
        Some(key) => create_once(&state, &caller, key, create).await?,
        None => detached_create(&state, create).await?,
    };
    Ok((
        StatusCode::CREATED,
        Json(sandbox_json(&state, &headers, &info)),
    )
        .into_response())
}

/// The token routed requests to the sandbox's ports need, if any.
fn traffic_token(info: &SandboxInfo) -> Value {
    info.route_all_ports
        .as_ref()
        .and_then(|r| r.access_token.clone())
        .map_or(Value::Null, Value::String)
}

async fn detached_create(state: &AppState, req: CreateSandbox) -> Result<SandboxInfo, E2bError> {
    let m = state.sandboxes().clone();
    // A create runs to completion even if the client goes away.
    match tokio::spawn(async move { m.create(req).await }).await {
        Ok(r) => r.map_err(E2bError::from),
        Err(e) => Err(E2bError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("create task failed: {e}"),
        )),
    }
}

/// A create with an `Idempotency-Key`: the same key (for the same API key)
/// within [`IDEMPOTENCY_TTL`] answers the sandbox the first call made.
async fn create_once(
    state: &AppState,
    who: &str,
    key: String,
    req: CreateSandbox,
) -> Result<SandboxInfo, E2bError> {
    let slot = {
        let mut map = lock(&state.e2b().idempotency);
        map.retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_TTL);
        map.entry(format!("{who}\u{0}{key}"))
            .or_insert_with(|| {
                (
                    std::sync::Arc::new(tokio::sync::Mutex::new(None)),
                    Instant::now(),
                )
            })
            .0
            .clone()
    };
    let mut made = slot.lock().await;
    if let Some(id) = made.as_ref() {
        if let Ok(info) = state.sandboxes().get(id).await {
            return Ok(info);
        }
    }
    let info = detached_create(state, req).await?;
    *made = Some(info.sandbox_id.clone());
    Ok(info)
}

async fn info(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> E2bResult {
    let info = state.sandboxes().get(&sandbox_id(&id)?).await?;
    if info.status == SandboxStatus::Dead {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!(
                "sandbox {id} is dead ({}); kill it to release it",
                info.error.as_deref().unwrap_or("its VM stopped")
            ),
        ));
    }
    Ok(Json(listed_json(&state, Some(&headers), &info, true)).into_response())
}

async fn kill(State(state): State<AppState>, Path(id): Path<String>) -> E2bResult {
    let id = sandbox_id(&id)?;
    let m = state.sandboxes().clone();
    match tokio::spawn(async move { m.destroy(&id).await }).await {
        Ok(r) => r?,
        Err(e) => {
            return Err(E2bError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("kill task failed: {e}"),
            ))
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TimeoutBody {
    timeout: Option<u64>,
}

async fn set_timeout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> E2bResult {
    let req: TimeoutBody = body(&bytes)?;
    let t = req
        .timeout
        .filter(|t| *t > 0)
        .ok_or_else(|| E2bError::bad("timeout (seconds, at least 1) is required"))?;
    state.sandboxes().set_timeout(&sandbox_id(&id)?, t).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RefreshBody {
    duration: Option<u64>,
}

/// Remaining lifetime of a running sandbox, if it has an end.
fn remaining(info: &SandboxInfo) -> Option<Duration> {
    let end = humantime::parse_rfc3339(info.end_at.as_deref()?).ok()?;
    Some(end.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Makes the sandbox live at least `t` seconds more (never shortens).
async fn extend(state: &AppState, info: &SandboxInfo, t: u64) -> Result<(), E2bError> {
    let needs = match remaining(info) {
        Some(left) => left < Duration::from_secs(t),
        None => info.timeout_sec.is_some(),
    };
    if needs {
        state.sandboxes().set_timeout(&info.sandbox_id, t).await?;
    }
    Ok(())
}

async fn refresh(State(state): State<AppState>, Path(id): Path<String>, bytes: Bytes) -> E2bResult {
    let req: RefreshBody = body(&bytes)?;
    let info = state.sandboxes().get(&sandbox_id(&id)?).await?;
    extend(&state, &info, req.duration.unwrap_or(60).max(1)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> E2bResult {
    let id = sandbox_id(&id)?;
    let info = state.sandboxes().get(&id).await?;
    if matches!(info.status, SandboxStatus::Paused | SandboxStatus::Pausing) {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    let m = state.sandboxes().clone();
    match tokio::spawn(async move { m.pause(&id).await }).await {
        Ok(r) => r?,
        Err(e) => {
            return Err(E2bError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("pause task failed: {e}"),
            ))
        }
    };
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ConnectBody {
    timeout: Option<u64>,
    memory: Option<bool>,
    auto_pause: Option<bool>,
}

/// `connect` (v1 and v2 take the same body).
async fn connect_call(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> E2bResult {
    connect(state, id, headers, bytes, false).await
}

async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> E2bResult {
    connect(state, id, headers, bytes, true).await
}

/// Connect: a running sandbox answers 200 (its lifetime only ever
/// extended); a paused one is resumed with the timeout as its new lifetime
/// and answers 201. `resume` (the older call) refuses a running sandbox.
async fn connect(
    state: AppState,
    id: String,
    headers: HeaderMap,
    bytes: Bytes,
    resume_only: bool,
) -> E2bResult {
    let req: ConnectBody = body(&bytes)?;
    if req.memory == Some(false) {
        return Err(E2bError::bad(
            "resuming without memory (on_resume=\"reboot\") is not supported: a resume restores the memory snapshot",
        ));
    }
    if req.auto_pause == Some(true) {
        return Err(E2bError::bad(
            "autoPause on resume is not supported; set it at create",
        ));
    }
    let sid = sandbox_id(&id)?;
    let info = state.sandboxes().get(&sid).await.map_err(|e| match e {
        ManagerError::NotFound { .. } => {
            E2bError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
        }
        other => other.into(),
    })?;
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SEC).max(1);
    match info.status {
        SandboxStatus::Running if resume_only => Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        )),
        SandboxStatus::Running => {
            extend(&state, &info, timeout).await?;
            let info = state.sandboxes().get(&sid).await?;
            Ok((StatusCode::OK, Json(sandbox_json(&state, &headers, &info))).into_response())
        }
        SandboxStatus::Paused => {
            state.sandboxes().set_timeout(&sid, timeout).await?;
            let m = state.sandboxes().clone();
            let info = match tokio::spawn(async move { m.resume(&sid).await }).await {
                Ok(r) => r?,
                Err(e) => {
                    return Err(E2bError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("resume task failed: {e}"),
                    ))
                }
            };
            Ok((
                StatusCode::CREATED,
                Json(sandbox_json(&state, &headers, &info)),
            )
                .into_response())
        }
        SandboxStatus::Dead => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} is dead; kill it and create a new one"),
        )),
        other => Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is {other}; retry in a moment"),
        )),
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus`).
fn percent_decode(s: &str, plus: bool) -> Result<String, E2bError> {
    let bad = || E2bError::bad(format!("metadata filter {s:?} is not URL-encoded properly"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The `metadata` filter as E2B's SDKs encode it (`k=v&k2=v2`, each part
/// escaped, the whole escaped again).
fn metadata_filter(raw: &str) -> Result<BTreeMap<String, String>, E2bError> {
    let whole = percent_decode(raw, true)?;
    let mut out = BTreeMap::new();
    for pair in whole.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            E2bError::bad(format!("metadata filter entry {pair:?} is not key=value"))
        })?;
        out.insert(percent_decode(k, false)?, percent_decode(v, false)?);
    }
    Ok(out)
}

/// The listed sandboxes after the filters, in order.
fn filtered(
    state: &AppState,
    caller: &str,
    all: Vec<SandboxInfo>,
    q: &HashMap<String, String>,
    default_states: &[&str],
) -> Result<Vec<SandboxInfo>, E2bError> {
    let metadata = q.get("metadata").map(|m| metadata_filter(m)).transpose()?;
    let states: Vec<String> = match q.get("state") {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        None => default_states.iter().map(|s| (*s).to_owned()).collect(),
    };
    for s in &states {
        if s != "running" && s != "paused" {
            return Err(E2bError::bad(format!(
                "unknown state {s:?}: use running or paused"
            )));
        }
    }
    let started_after = q
        .get("startedAfter")
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .or_else(|_| humantime::parse_rfc3339(t))
                .map_err(|_| E2bError::bad(format!("startedAfter {t:?} is not an RFC 3339 time")))
        })
        .transpose()?;
    let template = q.get("template");
    Ok(all
        .into_iter()
        .filter(|i| state.may_see(caller, i.owner.as_deref()))
        .filter(|i| state_of(i.status).is_some_and(|s| states.iter().any(|x| x == s)))
        .filter(|i| {
            metadata
                .as_ref()
                .is_none_or(|m| m.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
        })
        .filter(|i| {
            template.is_none_or(|t| *t == i.template || *t == e2b_template(state, &i.template))
        })
        .filter(|i| {
            started_after.is_none_or(|after| {
                humantime::parse_rfc3339(&i.created_at).is_ok_and(|c| c >= after)
            })
        })
        .collect())
}

async fn list_v1(
    State(state): State<AppState>,
    axum::Extension(caller): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult {
    let all = state.sandboxes().list().await;
    let items = filtered(&state, &caller.0, all, &q, &["running"])?;
    let out: Vec<Value> = items
        .iter()
        .map(|i| listed_json(&state, None, i, false))
        .collect();
    Ok(Json(out).into_response())
}

fn page_token(order: &str, info: &SandboxInfo) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{order}\u{0}{}\u{0}{}",
        info.created_at, info.sandbox_id
    ))
}

async fn list_v2(
    State(state): State<AppState>,
    axum::Extension(caller): Caller,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult {
    let limit: usize = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| E2bError::bad(format!("limit {l:?} must be between 1 and 100")))?,
    };
    let order = q.get("order").map_or("desc", String::as_str);
    if order != "asc" && order != "desc" {
        return Err(E2bError::bad(format!(
            "order {order:?} must be asc or desc"
        )));
    }
    let mut items = filtered(
        &state,
        &caller.0,
        state.sandboxes().list().await,
        &q,
        &["running", "paused"],
    )?;
    // `list` is oldest first.
    if order == "desc" {
        items.reverse();
    }
    if let Some(token) = q.get("nextToken").filter(|t| !t.is_empty()) {
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| E2bError::bad("nextToken is not a token this server gave out"))?;
        let mut parts = decoded.split('\u{0}');
        let (Some(o), Some(created), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(E2bError::bad(
                "nextToken is not a token this server gave out",
            ));
        };
        if o != order {
            return Err(E2bError::bad(
                "nextToken was made for another order; keep the order while paging",
            ));
        }
        let key = |i: &SandboxInfo| (i.created_at.clone(), i.sandbox_id.to_string());
        let at = (created.to_owned(), id.to_owned());
        items.retain(|i| {
            if order == "asc" {
                key(i) > at
            } else {
                key(i) < at
            }
        });
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let out: Vec<Value> = items
        .iter()
        .map(|i| listed_json(&state, None, i, false))
        .collect();
    let mut resp = Json(out).into_response();
    if more {
        if let Some(last) = items.last() {
            if let Ok(v) = HeaderValue::from_str(&page_token(order, last)) {
                resp.headers_mut().insert("x-next-token", v);
            }
        }
    }
    Ok(resp)
}

/// One sample of the guest's CPU, memory and disk use, read inside it.
const METRICS_SCRIPT: &str = "head -n1 /proc/stat; sleep 0.2; head -n1 /proc/stat; nproc; \
    grep -E '^(MemTotal|MemAvailable|Cached):' /proc/meminfo; df -B1 --output=used,size / | tail -n1";

/// Parses [`METRICS_SCRIPT`]'s output into E2B's `SandboxMetric`.
fn parse_metrics(out: &str, at: SystemTime) -> Option<Value> {
    let mut lines = out.lines();
    let cpu = |l: &str| -> Option<(u64, u64)> {
        let v: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    };
    let (t1, i1) = cpu(lines.next()?)?;
    let (t2, i2) = cpu(lines.next()?)?;
    let count: u64 = lines.next()?.trim().parse().ok()?;
    let mut mem = HashMap::new();
    let mut disk = (0u64, 0u64);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            mem.insert(k.trim().to_owned(), kb * 1024);
        } else {
            let v: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            disk = (*v.first()?, *v.get(1)?);
        }
    }
    let total = t2.saturating_sub(t1);
    let busy = total.saturating_sub(i2.saturating_sub(i1));
    let pct = if total == 0 {
        0.0
    } else {
        busy as f64 * 100.0 / total as f64
    };
    let mem_total = *mem.get("MemTotal")?;
    let unix = at.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(json!({
        "timestamp": humantime::format_rfc3339_seconds(at).to_string(),
        "timestampUnix": unix,
        "cpuCount": count,
        "cpuUsedPct": (pct * 100.0).round() / 100.0,
        "memUsed": mem_total.saturating_sub(mem.get("MemAvailable").copied().unwrap_or(0)),
        "memTotal": mem_total,
        "memCache": mem.get("Cached").copied().unwrap_or(0),
        "diskUsed": disk.0,
        "diskTotal": disk.1,
    }))
}

/// One current sample (not a history): `[]` for a paused sandbox or when
/// `start`/`end` exclude now.
async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult {
    let sid = sandbox_id(&id)?;
    let info = state.sandboxes().get(&sid).await?;
    let now = SystemTime::now();
    let unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bound = |k: &str| -> Result<Option<u64>, E2bError> {
        q.get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| E2bError::bad(format!("{k} must be Unix seconds (got {v:?})")))
            })
            .transpose()
    };
    let (start, end) = (bound("start")?, bound("end")?);
    if info.status != SandboxStatus::Running
        || start.is_some_and(|s| s > unix)
        || end.is_some_and(|e| e < unix)
    {
        return Ok(Json(Vec::<Value>::new()).into_response());
    }
    let spec = ExecSpec {
        user: Some("root".into()),
        timeout: Some(Duration::from_secs(10)),
        ..ExecSpec::shell(METRICS_SCRIPT)
    };
    let out = state.sandboxes().guest(&sid).exec(spec).await?;
    let sample = parse_metrics(&out.stdout, now).ok_or_else(|| {
        E2bError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not read the guest's metrics: {}", out.stderr.trim()),
        )
    })?;
    let _ = DEFAULT_USER;
    Ok(Json(vec![sample]).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_filters_decode_like_e2b() {
        // {"user": "a b&c=d", "k/2": "v%"} after the SDK's three encodings
        // and the framework's one decoding.
        let once = "user=a%2520b%2526c%253Dd&k%252F2=v%2525";
        let m = metadata_filter(once).unwrap();
        assert_eq!(m.get("user").map(String::as_str), Some("a b&c=d"));
        assert_eq!(m.get("k/2").map(String::as_str), Some("v%"));
        assert!(metadata_filter("novalue").is_err());
        assert!(metadata_filter("k=%zz").is_err());
    }

    #[test]
    fn metrics_parse_from_the_guest() {
        let out = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu  150 0 150 900 0 0 0 0 0 0\n1\n\
                   MemTotal:  1000 kB\nMemAvailable:  600 kB\nCached:  100 kB\n  123456 9999999\n";
        let m = parse_metrics(out, SystemTime::UNIX_EPOCH + Duration::from_secs(10)).unwrap();
        assert_eq!(m["cpuUsedPct"], 50.0);
        assert_eq!(m["memTotal"], 1_024_000);
        assert_eq!(m["memUsed"], 409_600);
        assert_eq!(m["diskUsed"], 123_456);
        assert_eq!(m["timestampUnix"], 10);
        assert!(parse_metrics("garbage", SystemTime::now()).is_none());
    }

    fn req(body: Value) -> NewSandbox {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn e2b_network_settings_map_onto_policies() {
        // The SDK's default: no network here.
        let (policy, routing) = e2b_policy(&req(json!({"allow_internet_access": true}))).unwrap();
        assert_eq!(policy, None);
        // Every port routed, without a token unless traffic is private.
        assert_eq!(routing.access_token, None);
        let (policy, routing) = e2b_policy(&req(
            json!({"allow_internet_access": true, "network": {"allowPublicTraffic": false}}),
        ))
        .unwrap();
        assert_eq!(
            policy,
            Some(NetworkPolicy::default()),
            "no egress rules: no network"
        );
        assert_eq!(routing.access_token.map(|t| t.len()), Some(64));
        // denyOut everything + allowOut = an allowlist.
        let p = e2b_policy(&req(
            json!({"network": {"denyOut": ["0.0.0.0/0"], "allowOut": ["1.1.1.1", "pypi.org"]}}),
        ))
        .unwrap()
        .0
        .unwrap();
        assert_eq!(p.mode, NetworkMode::Allowlist);
        assert_eq!(p.allow, ["1.1.1.1", "pypi.org"]);
        // Otherwise everything public but denyOut, allowOut winning.
        let p = e2b_policy(&req(
            json!({"network": {"denyOut": ["8.8.8.8/32"], "allowOut": ["8.8.8.8"]}}),
        ))
        .unwrap()
        .0
        .unwrap();
        assert_eq!(
            (p.mode, p.deny.as_slice(), p.allow.as_slice()),
            (
                NetworkMode::Full,
                &["8.8.8.8/32".to_owned()][..],
                &["8.8.8.8".to_owned()][..]
            )
        );
        assert_eq!(
            e2b_policy(&req(
                json!({"network": {"denyOut": ["8.8.8.8/32"]}, "allow_internet_access": false})
            ))
            .unwrap()
            .0,
            Some(NetworkPolicy::default())
        );
        for (body, says) in [
            (
                json!({"network": {"maskRequestHost": "x"}}),
                "maskRequestHost",
            ),
            (
                json!({"network": {"allowOut": "1.1.1.1"}}),
                "network is not",
            ),
            (
                json!({"network": {"egressProxy": {"address": "p:1080"}}}),
                "egressProxy",
            ),
            (
                json!({"network": {"rules": {"api.x.com": {}}}}),
                "network.rules",
            ),
        ] {
            let err = e2b_policy(&req(body)).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
