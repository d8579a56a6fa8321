//! The E2B surface's route table and its OpenAPI document
//! (`docs/e2b-openapi.json`). The document lists what is served; the wire
//! details of each call are E2B's (see `docs/e2b.md`). A router test sends
//! a request to every route listed here, so the table cannot name a route
//! the server does not have.

use serde_json::{json, Map, Value};

/// One route of the E2B surface.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path as the client sends it (control-plane paths without `/e2b`).
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Status of a success.
    pub ok: u16,
}

const fn r(method: &'static str, path: &'static str, ok: u16, summary: &'static str) -> Route {
    Route {
        method,
        path,
        summary,
        ok,
    }
}

/// The control plane, served under `/e2b` (`E2B_API_URL`).
pub const CONTROL: &[Route] = &[
    r("post", "/sandboxes", 201, "Create a sandbox (SDKs before 2.52): body NewSandbox"),
    r("post", "/v2/sandboxes", 201, "Create a sandbox (SDKs from 2.52): body NewSandboxV2, optional Idempotency-Key header"),
    r("get", "/sandboxes", 200, "Running sandboxes (deprecated list): metadata filter"),
    r("get", "/v2/sandboxes", 200, "Sandboxes: metadata, state, template, startedAfter, order, limit, nextToken; next page in X-Next-Token"),
    r("get", "/sandboxes/{id}", 200, "Sandbox detail"),
    r("delete", "/sandboxes/{id}", 204, "Kill a sandbox"),
    r("post", "/sandboxes/{id}/timeout", 204, "Set the remaining lifetime: {timeout}"),
    r("put", "/sandboxes/{id}/network", 204, "Replace the egress rules: {allowOut, denyOut, allow_internet_access} (see docs/network.md)"),
    r("post", "/sandboxes/{id}/refreshes", 204, "Extend the lifetime to at least {duration} seconds"),
    r("post", "/sandboxes/{id}/pause", 204, "Pause (409 when already paused)"),
    r("post", "/sandboxes/{id}/resume", 201, "Resume a paused sandbox (deprecated; 409 when running)"),
    r("post", "/sandboxes/{id}/connect", 200, "Connect: 200 running (lifetime extended), 201 resumed"),
    r("post", "/v2/sandboxes/{id}/connect", 200, "Connect (SDKs from 2.52): 200 running, 201 resumed"),
    r("get", "/sandboxes/{id}/metrics", 200, "One current CPU, memory and disk sample"),
];

/// envd, served at the root for requests with `E2b-Sandbox-Id`
/// (`E2B_SANDBOX_URL`); `/files` also for signed links without it.
pub const ENVD: &[Route] = &[
    r(
        "post",
        "/process.Process/Start",
        200,
        "Connect server stream: start a process, then its start, data, keepalive and end events",
    ),
    r(
        "post",
        "/process.Process/Connect",
        200,
        "Connect server stream: attach to a process (output from now on)",
    ),
    r(
        "post",
        "/process.Process/List",
        200,
        "Connect unary: running processes",
    ),
    r(
        "post",
        "/process.Process/SendInput",
        200,
        "Connect unary: bytes to stdin or the PTY",
    ),
    r(
        "post",
        "/process.Process/StreamInput",
        200,
        "Connect client stream: start {process}, then data messages",
    ),
    r(
        "post",
        "/process.Process/SendSignal",
        200,
        "Connect unary: SIGNAL_SIGKILL or SIGNAL_SIGTERM",
    ),
    r(
        "post",
        "/process.Process/CloseStdin",
        200,
        "Connect unary: close stdin",
    ),
    r(
        "post",
        "/process.Process/Update",
        200,
        "Connect unary: resize the PTY",
    ),
    r(
        "post",
        "/filesystem.Filesystem/Stat",
        200,
        "Connect unary: one entry",
    ),
    r(
        "post",
        "/filesystem.Filesystem/ListDir",
        200,
        "Connect unary: entries to a depth",
    ),
    r(
        "post",
        "/filesystem.Filesystem/MakeDir",
        200,
        "Connect unary: make a directory and its parents (already_exists when there)",
    ),
    r(
        "post",
        "/filesystem.Filesystem/Move",
        200,
        "Connect unary: rename, making the destination's parents",
    ),
    r(
        "post",
        "/filesystem.Filesystem/Remove",
        200,
        "Connect unary: remove a file or tree (nothing there is fine)",
    ),
    r(
        "post",
        "/filesystem.Filesystem/WatchDir",
        200,
        "Connect server stream: start, then filesystem events",
    ),
    r(
        "post",
        "/filesystem.Filesystem/CreateWatcher",
        200,
        "Connect unary: a polling watcher",
    ),
    r(
        "post",
        "/filesystem.Filesystem/GetWatcherEvents",
        200,
        "Connect unary: the watcher's events since the last call",
    ),
    r(
        "post",
        "/filesystem.Filesystem/RemoveWatcher",
        200,
        "Connect unary: stop a watcher",
    ),
    r(
        "get",
        "/files",
        200,
        "Download a file: path, username, signature, signature_expiration",
    ),
    r(
        "post",
        "/files",
        200,
        "Upload files: multipart (parts named file) or octet-stream, gzip allowed",
    ),
    r(
        "get",
        "/health",
        204,
        "204 while the sandbox runs, 502 otherwise",
    ),
];

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "integer", "description": "The HTTP status"},
            "message": {"type": "string"}
        }
    })
}

fn connect_error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "Connect code: not_found, invalid_argument, unauthenticated, unimplemented, ..."},
            "message": {"type": "string"}
        }
    })
}

fn operation(route: &Route, control: bool) -> Value {
    let rpc = route.path.contains('.');
    let mut responses = Map::new();
    responses.insert(
        route.ok.to_string(),
        json!({"description": if rpc { "The answer (unary JSON, or a stream of envelopes ending in an end-stream envelope)" } else { "Success" }}),
    );
    let err = if rpc {
        json!({"$ref": "#/components/schemas/ConnectError"})
    } else {
        json!({"$ref": "#/components/schemas/Error"})
    };
    responses.insert(
        "default".into(),
        json!({"description": "Error", "content": {"application/json": {"schema": err}}}),
    );
    let mut op = json!({"summary": route.summary, "responses": responses});
    if control {
        op["tags"] = json!(["control plane"]);
        op["security"] = json!([{"api_key": []}]);
        if route.path.contains("{id}") {
            op["parameters"] = json!([
                {"name": "id", "in": "path", "required": true,
                 "schema": {"type": "string"}, "description": "Sandbox id"},
            ]);
        }
    } else {
        op["tags"] = json!(["envd"]);
        op["parameters"] = json!([
            {"name": "E2b-Sandbox-Id", "in": "header", "required": route.path != "/files",
             "schema": {"type": "string"}, "description": "The sandbox (signed /files links carry none)"},
            {"name": "X-Access-Token", "in": "header", "required": false,
             "schema": {"type": "string"}, "description": "The sandbox's envdAccessToken"},
        ]);
    }
    op
}

/// The OpenAPI document of the E2B surface, as pretty JSON.
pub fn openapi_json() -> String {
    let mut paths = Map::new();
    for (routes, control) in [(CONTROL, true), (ENVD, false)] {
        for route in routes {
            let path = if control {
                format!("/e2b{}", route.path)
            } else {
                route.path.to_owned()
            };
            let entry = paths.entry(path).or_insert_with(|| json!({}));
            entry[route.method] = operation(route, control);
        }
    }
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "locale2b: the E2B-compatible API",
            "description": "What locale2b serves to E2B's SDKs: the control plane under /e2b (E2B_API_URL) and envd at the root for requests with E2b-Sandbox-Id (E2B_SANDBOX_URL). Bodies and semantics are E2B's; docs/e2b.md lists what is supported.",
            "license": {"name": "Apache-2.0"}
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": error_schema(), "ConnectError": connect_error_schema()},
            "securitySchemes": {"api_key": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}}
        },
        "tags": [
            {"name": "control plane", "description": "Sandbox lifecycle, E2B_API_URL"},
            {"name": "envd", "description": "Inside a sandbox: processes, files, E2B_SANDBOX_URL"}
        ]
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
