//! Exposed ports (`/sandboxes/{id}/ports...`): a server in the guest made
//! reachable from the host, without a network device in the guest.

use super::ApiResult;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiPath};
use crate::models::*;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use locale2b_manager::ExposedPort;
use locale2b_protocol::SandboxId;

fn response(s: &AppState, id: &SandboxId, p: ExposedPort, already: Option<bool>) -> PortResponse {
    PortResponse {
        port: p.port,
        url: p.url,
        host_port: p.host_port,
        route_host: s.route_host(id, p.port),
        created_at: p.created_at,
        already_exposed: already,
        access_token: p.access_token,
    }
}

/// Exposes a guest port: the server gives it a TCP listener on the host
/// (`url`) and routes requests whose Host is `route_host` to it. Exposing
/// a port again answers the existing one (`already_exposed`). Nothing
/// needs to listen in the guest yet: each connection is opened in the
/// guest when it arrives.
#[utoipa::path(post, path = "/sandboxes/{id}/ports/expose", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExposeBody,
    responses(
        (status = 200, description = "Exposed (or already exposed)", body = PortResponse),
        (status = 400, description = "Port outside 1–65535, or too many exposed ports", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The sandbox is being destroyed or is dead, or the port is exposed already with the other `require_token`", body = ErrorResponse),
    ))]
pub async fn expose_port(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
    ApiJson(body): ApiJson<ExposeBody>,
) -> ApiResult<PortResponse> {
    let port = check_port(body.port)?;
    let (p, already) = s
        .sandboxes()
        .expose_port(&id, port, body.require_token)
        .await?;
    Ok(Json(response(&s, &id, p, Some(already))))
}

/// The sandbox's exposed ports.
#[utoipa::path(get, path = "/sandboxes/{id}/ports", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Exposed ports, by port", body = PortList),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ))]
pub async fn list_ports(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<SandboxId>,
) -> ApiResult<PortList> {
    let ports = s.sandboxes().list_ports(&id).await?;
    Ok(Json(PortList {
        ports: ports
            .into_iter()
            .map(|p| response(&s, &id, p, None))
            .collect(),
    }))
}

/// Closes an exposed port: its listener stops, the connections it carries
/// end, and the next connection to its URL is refused.
#[utoipa::path(delete, path = "/sandboxes/{id}/ports/{port}", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id"), ("port" = u16, Path, description = "Guest port")),
    responses(
        (status = 204, description = "Closed"),
        (status = 400, description = "Not a port number", body = ErrorResponse),
        (status = 404, description = "No such sandbox, or the port is not exposed", body = ErrorResponse),
    ))]
pub async fn close_port(
    State(s): State<AppState>,
    ApiPath((id, port)): ApiPath<(SandboxId, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let port = port
        .parse::<u64>()
        .map_err(|_| ApiError::invalid(format!("{port:?} is not a port number (1–65535)")))?;
    let port = check_port(port)?;
    s.sandboxes().close_port(&id, port).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn check_port(port: u64) -> Result<u16, ApiError> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::invalid(format!(
            "port must be between 1 and 65535 (got {port})"
        ))),
    }
}
