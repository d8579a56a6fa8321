//! Host-header routing to exposed ports: a request whose `Host` is
//! `<port>-<sandbox_id>.<ports_domain>` is passed to that exposed port of
//! that sandbox (HTTP/1.1, WebSocket and any other `Upgrade`), whatever
//! its path; to any port of a sandbox that routes them all (the E2B
//! surface's sandboxes, [`locale2b_manager::RouteAllPorts`]). Such requests need no API key: they are the traffic of the
//! app the sandbox serves, to whoever can reach the server, exactly like
//! the port's own listener.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use locale2b_protocol::SandboxId;

/// The sandbox and port a Host header names under `domain`, if it does.
pub fn parse_route_host(host: &str, domain: &str) -> Option<(SandboxId, u16)> {
    if domain.is_empty() {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    Some((id.parse().ok()?, port))
}

/// The middleware: routes by Host, else passes the request on.
pub async fn route(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let target = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| parse_route_host(h, s.ports_domain()));
    match target {
        Some((id, port)) => proxy(&s, id, port, req).await,
        None => next.run(req).await,
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    crate::e2b::http_error(status, &message)
}

async fn proxy(s: &AppState, id: SandboxId, port: u16, mut req: Request) -> Response {
    let token = match s.sandboxes().port_route(&id, port).await {
        Ok(locale2b_manager::PortRoute::Open) => None,
        Ok(locale2b_manager::PortRoute::Token(t)) => Some(t),
        Ok(locale2b_manager::PortRoute::Closed) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("port {port} of sandbox {id} is not exposed: POST /sandboxes/{id}/ports/expose first"),
            )
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Some(token) = token {
        let presented = req
            .headers()
            .get(locale2b_manager::PORT_TOKEN_HEADER)
            .map(|v| v.as_bytes().trim_ascii());
        let ok = presented
            .is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(p, token.as_bytes())));
        if !ok {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "port {port} of sandbox {id} needs its access token in the {} header",
                    locale2b_manager::PORT_TOKEN_HEADER
                ),
            );
        }
    }
    let conn = match s.sandboxes().guest(&id).open_port(port).await {
        Ok(c) => c,
        Err(e) => {
            let api = ApiError::from(e);
            let (_, _, message) = api.status_code_message();
            return refuse(StatusCode::BAD_GATEWAY, message);
        }
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(conn)).await {
            Ok(pair) => pair,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    format!("port {port} of sandbox {id}: {e}"),
                )
            }
        };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "proxied connection failed");
        }
    });
    let wants_upgrade = req.headers().contains_key(header::UPGRADE);
    let client_side = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                format!("port {port} of sandbox {id} did not answer over HTTP: {e}"),
            )
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let guest_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(a), Ok(b)) = (client_side.await, guest_side.await) else {
                    return;
                };
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            });
        }
    }
    resp.map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::parse_route_host;

    #[test]
    fn hosts_are_parsed() {
        let (id, port) = parse_route_host("8000-sb-abc123.localhost:8080", "localhost").unwrap();
        assert_eq!((id.as_str(), port), ("sb-abc123", 8000));
        let (id, _) = parse_route_host("80-SB-ABC123.Sandbox.Example.", "sandbox.example").unwrap();
        assert_eq!(id.as_str(), "sb-abc123");
        assert!(parse_route_host("localhost:8080", "localhost").is_none());
        assert!(parse_route_host("127.0.0.1:8080", "localhost").is_none());
        assert!(parse_route_host("0-sb-abc123.localhost", "localhost").is_none());
        assert!(parse_route_host("8000-sb-abc123.localhostx", "localhost").is_none());
        assert!(parse_route_host("8000-sb-abc123.evil.com", "localhost").is_none());
        assert!(parse_route_host("8000-sb-abc123.localhost", "").is_none());
    }
}
