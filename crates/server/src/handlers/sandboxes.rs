//! Sandbox lifecycle: create, list, get, destroy, pause, resume.

use super::{detached, ApiResult};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiPath};
use crate::models::*;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use locale2b_manager::CreateSandbox;
use locale2b_protocol::{SandboxId, WorkspaceId};

/// Creates a sandbox (boots a VM), or resumes the workspace named by
/// `workspace_id` when it exists and is paused.
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxBody,
    responses(
        (status = 200, description = "Sandbox running (a named workspace that already runs answers its sandbox)", body = SandboxResponse),
        (status = 400, description = "Invalid sizes, template or workspace id", body = ErrorResponse),
        (status = 403, description = "The API key is at one of its quotas (`quota_exceeded`; the message names it), or a network policy was asked of a server that cannot make networks (`network_unavailable`)", body = ErrorResponse),
        (status = 409, description = "The workspace's sandbox is dead (destroy it first), or another API key's workspace has that id", body = ErrorResponse),
        (status = 502, description = "The VM failed to start", body = ErrorResponse),
        (status = 503, description = "At capacity and nothing could be evicted (Retry-After header)", body = ErrorResponse),
        (status = 507, description = "The host disk cannot hold the workspace disk asked for", body = ErrorResponse),
        (status = 504, description = "The guest agent did not come up in time", body = ErrorResponse),
    ))]
pub async fn create_sandbox(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::middleware::KeyName>,
    ApiJson(body): ApiJson<CreateSandboxBody>,
) -> ApiResult<SandboxResponse> {
    let workspace_id = body
        .workspace_id
        .map(WorkspaceId::try_from)
        .transpose()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(ws) = &workspace_id {
        if let Ok(info) = s.sandboxes().get_workspace(ws).await {
            if !s.may_see(&caller.0, info.owner.as_deref()) {
                return Err(ApiError::from(locale2b_manager::ManagerError::Conflict(
                    format!("workspace id {ws} is taken by another API key; choose another workspace_id"),
                )));
            }
        }
    }
    let req = CreateSandbox {
        memory_mb: body.memory_mb,
        vcpu_count: body.vcpu_count,
        template: body.template,
        workspace_id,
        env: body.env,
        timeout_sec: body.timeout_sec,
        on_timeout: body.on_timeout,
        metadata: body.metadata,
        access_token: None,
        idle_timeout_sec: body.idle_timeout_sec,
        auto_resume: body.auto_resume,
        disk_size_mb: body.disk_size_mb,
        boot: body.boot,
        owner: Some(caller.0),
        network: body
            .network
            .map(NetworkBody::policy)
            .transpose()
            .map_err(|m| ApiError::from(locale2b_manager::ManagerError::InvalidInput(m)))?,
        route_all_ports: None,
    };
    let m = s.sandboxes().clone();
    let info = detached(async move { m.create(req).await }).await?;
    Ok(Json(info.into()))
}

/// Lists all sandboxes.
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    responses((status = 200, description = "All sandboxes", body = SandboxList)))]
pub async fn list_sandboxes(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::middleware::KeyName>,
) -> Json<SandboxList> {
    let sandboxes = s
        .sandboxes()
        .list()
        .await
        .into_iter()
        .filter(|sb| s.may_see(&caller.0, sb.owner.as_deref()))
        .map(Into::into)
        .collect();
    Json(SandboxList { sandboxes })
}

/// Describes one sandbox.
#[utoipa::path(get, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxResponse),
        (status = 400, description = "Malformed sandbox id", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ))]
pub async fn get_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<SandboxResponse> {
    Ok(Json(s.sandboxes().get(&id).await?.into()))
}

/// Host and guest figures of one sandbox: CPU use of its VMM, guest
/// memory and disk use, VMM memory, host disk taken. Reading them is not
/// activity (the idle timeout keeps running, a paused sandbox stays
/// paused).
#[utoipa::path(get, path = "/sandboxes/{id}/metrics", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The figures", body = SandboxMetricsResponse),
        (status = 400, description = "Malformed sandbox id", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ))]
pub async fn sandbox_metrics(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<SandboxMetricsResponse> {
    Ok(Json(s.sandboxes().sandbox_metrics(&id).await?.into()))
}

/// Destroys a sandbox (its workspace's data is kept). 404 means it is
/// already gone; callers may treat that as success.
#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Destroyed", body = DestroyedResponse),
        (status = 404, description = "No such sandbox (already gone)", body = ErrorResponse),
    ))]
pub async fn destroy_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<DestroyedResponse> {
    let m = s.sandboxes().clone();
    let id2 = id.clone();
    detached(async move { m.destroy(&id2).await }).await?;
    Ok(Json(DestroyedResponse {
        sandbox_id: id.into(),
        status: "destroyed".into(),
    }))
}

/// Pauses a sandbox to a snapshot (frees its RAM).
#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Paused (or already paused)", body = SandboxResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Not in a pausable state", body = ErrorResponse),
    ))]
pub async fn pause_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<SandboxResponse> {
    let m = s.sandboxes().clone();
    Ok(Json(
        detached(async move { m.pause(&id).await }).await?.into(),
    ))
}

/// Forks a running sandbox into children that continue from its memory and
/// disk (each in a new workspace); the parent keeps running.
#[utoipa::path(post, path = "/sandboxes/{id}/fork", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id of the parent")),
    request_body = ForkBody,
    responses(
        (status = 200, description = "Every child runs", body = ForkResponse),
        (status = 400, description = "count outside 1–64", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The parent is not running", body = ErrorResponse),
        (status = 501, description = "The VMM backend cannot fork (firecracker)", body = ErrorResponse),
        (status = 403, description = "The API key is at one of its quotas (`quota_exceeded`; the message names it)", body = ErrorResponse),
        (status = 503, description = "Not enough capacity for the children (none is left running)", body = ErrorResponse),
    ))]
pub async fn fork_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    body: axum::body::Bytes,
) -> ApiResult<ForkResponse> {
    // The body is optional: none (or `{}`) makes one child.
    let body: ForkBody = if body.iter().all(u8::is_ascii_whitespace) {
        ForkBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!("invalid fork body ({e}): send {{\"count\": N}}"))
        })?
    };
    let count = body.count.unwrap_or(1);
    let m = s.sandboxes().clone();
    let children = detached(async move { m.fork(&id, count).await }).await?;
    Ok(Json(ForkResponse {
        sandboxes: children.into_iter().map(Into::into).collect(),
    }))
}

/// Resumes a paused sandbox (it keeps its id).
#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Running (or already running)", body = SandboxResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Not in a resumable state, or the snapshot is unusable (`snapshot_invalid`)", body = ErrorResponse),
        (status = 502, description = "Restore failed; the sandbox stays paused", body = ErrorResponse),
        (status = 403, description = "The API key is over its memory quota (`quota_exceeded`; the message names it)", body = ErrorResponse),
        (status = 503, description = "At capacity (Retry-After header)", body = ErrorResponse),
    ))]
pub async fn resume_sandbox(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<SandboxResponse> {
    let m = s.sandboxes().clone();
    Ok(Json(
        detached(async move { m.resume(&id).await }).await?.into(),
    ))
}

/// Sets a sandbox's lifetime: it ends `timeout_sec` from now (destroyed or
/// paused, as its `on_timeout` says); `0` removes the end.
#[utoipa::path(post, path = "/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeoutBody,
    responses(
        (status = 200, description = "The sandbox with its new `end_at`", body = SandboxResponse),
        (status = 400, description = "Longer than max_sandbox_timeout_sec", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The sandbox is changing state or dead", body = ErrorResponse),
    ))]
pub async fn set_timeout(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<SetTimeoutBody>,
) -> ApiResult<SandboxResponse> {
    Ok(Json(
        s.sandboxes()
            .set_timeout(&id, body.timeout_sec)
            .await?
            .into(),
    ))
}

/// Changes the sandbox's egress policy. On a running sandbox the rules and
/// its DNS resolver change at once (connections already open stay); on a
/// paused one they apply at its resume. Only a sandbox created with a
/// network (mode `allowlist` or `full`) has a network device; mode `none`
/// on it cuts all traffic without removing the device.
#[utoipa::path(put, path = "/sandboxes/{id}/network", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = NetworkBody,
    responses(
        (status = 200, description = "The policy is in force", body = SandboxResponse),
        (status = 400, description = "A bad mode, or an allow/deny entry that is not a domain name, IPv4 address or CIDR (the message names it)", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The sandbox was created without a network (its VM has no network device), or is being destroyed or dead", body = ErrorResponse),
        (status = 403, description = "This server cannot make networks (`network_unavailable`: not root, or ip/nft missing; the message says which)", body = ErrorResponse),
    ))]
pub async fn set_network(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<NetworkBody>,
) -> ApiResult<SandboxResponse> {
    let policy = body.policy().map_err(ApiError::invalid)?;
    let m = s.sandboxes().clone();
    let info = detached(async move { m.set_network(&id, policy).await }).await?;
    Ok(Json(info.into()))
}
