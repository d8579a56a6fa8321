//! Bodies of the exposed-port routes (`/sandboxes/{id}/ports...`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /sandboxes/{id}/ports/expose`. Unknown fields are ignored
/// (CompyMac's client may send more).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExposeBody {
    /// The port a server in the guest listens on (on its loopback or on
    /// all addresses), 1–65535.
    #[schema(example = 8000)]
    pub port: u64,
    /// Require an access token on every connection (E2B's
    /// `allowPublicTraffic: false`): the answer's `access_token` must be
    /// sent in the `e2b-traffic-access-token` header. Default false.
    #[serde(default)]
    pub require_token: bool,
}

/// One exposed port.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortResponse {
    /// The port inside the guest.
    #[schema(example = 8000)]
    pub port: u16,
    /// Where it is reached from the host (and from the LAN when
    /// `ports_host` is `0.0.0.0`): a listener of its own, any TCP protocol.
    #[schema(example = "http://127.0.0.1:40123/")]
    pub url: String,
    /// The host port of that listener.
    #[schema(example = 40123)]
    pub host_port: u16,
    /// The Host header that routes a request to this port through the
    /// API server's own address (HTTP and WebSocket), when `ports_domain`
    /// is set.
    #[schema(example = "8000-sb-abc123.localhost")]
    pub route_host: Option<String>,
    /// When it was exposed (RFC 3339).
    pub created_at: String,
    /// Set by `expose`: whether the port was exposed already (the answer
    /// is then the existing one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_exposed: Option<bool>,
    /// The token every connection must present in the
    /// `e2b-traffic-access-token` header, when the port was exposed with
    /// `require_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// `GET /sandboxes/{id}/ports`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortList {
    /// The exposed ports, by port.
    pub ports: Vec<PortResponse>,
}
