//! The OpenAPI document (generated from the handlers and models with
//! utoipa), and the Swagger UI / ReDoc pages.
//!
//! The UI pages are small HTML files. Their JavaScript and CSS are served
//! from `<base_dir>/ui/` under `/ui-assets/` when installed there (the
//! quickstart copies the npm packages `swagger-ui-dist` to
//! `<base_dir>/ui/swagger-ui/` and `redoc`'s `bundles/redoc.standalone.js` to
//! `<base_dir>/ui/redoc/`); otherwise the pages point the browser at the
//! public jsDelivr CDN. Nothing is downloaded at build time.

use crate::error::ApiError;
use crate::handlers;
use crate::models::*;
use crate::AppState;
use axum::extract::{Path as AxPath, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use locale2b_manager::Limits;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI description of the REST API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "locale2b",
        description = "Self-hosted sandboxes in microVMs: create a sandbox, run commands, move files, pause and resume. Every route except /health, /openapi.json, /docs and /redoc needs an API key in `X-API-Key` or `Authorization: Bearer`. Errors always have the body `{\"error\": {\"code\", \"message\", \"details\"?}}`; see docs/api.md.",
        license(name = "Apache-2.0"),
    ),
    paths(
        handlers::health,
        handlers::metrics,
        handlers::sandbox_metrics,
        handlers::create_sandbox,
        handlers::list_sandboxes,
        handlers::get_sandbox,
        handlers::destroy_sandbox,
        handlers::pause_sandbox,
        handlers::fork_sandbox,
        handlers::resume_sandbox,
        handlers::set_timeout,
        handlers::set_network,
        handlers::exec,
        handlers::write_file,
        handlers::read_file,
        handlers::list_files,
        handlers::stat,
        handlers::mkdir,
        handlers::delete_file,
        handlers::delete_file_post,
        handlers::upload,
        handlers::get_content,
        handlers::put_content,
        handlers::checksum,
        handlers::list_workspaces,
        handlers::get_workspace,
        handlers::delete_workspace,
        handlers::start_process,
        handlers::list_processes,
        handlers::get_process,
        handlers::remove_process,
        handlers::process_output,
        handlers::process_stream,
        handlers::process_stdin,
        handlers::process_signal,
        handlers::process_resize,
        handlers::process_pty,
        handlers::expose_port,
        handlers::list_ports,
        handlers::close_port,
    ),
    components(schemas(crate::error::ErrorResponse, crate::error::ErrorDetail, Encoding, StreamLine)),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "health", description = "Liveness and capacity"),
        (name = "sandboxes", description = "Sandbox lifecycle"),
        (name = "commands", description = "Running commands"),
        (name = "processes", description = "Background processes, live output, PTYs"),
        (name = "files", description = "Files inside a sandbox"),
        (name = "workspaces", description = "Persistent workspaces"),
        (name = "ports", description = "Exposed ports: servers in the guest reached from the host"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The limits of the default configuration (what `docs/openapi.json`
/// states; a running server states its own).
pub fn default_limits() -> Limits {
    let c = locale2b_config::ManagerConfig::default();
    Limits {
        min_memory_mb: c.min_memory_mb,
        max_memory_mb: c.max_memory_mb,
        default_memory_mb: c.default_memory_mb,
        max_vcpu: c.max_vcpu,
        default_vcpu: c.default_vcpu,
        default_exec_timeout_ms: c.exec_timeout_sec * 1000,
        max_exec_timeout_ms: c.max_exec_timeout_sec * 1000,
        max_sandbox_timeout_sec: c.max_sandbox_timeout_sec,
        disk_size_mb: c.disk_size_mb,
        default_template: c.default_template,
    }
}

/// The spec for the default configuration as pretty JSON (what
/// `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    openapi_json_for(&default_limits())
}

/// The spec as pretty JSON, with the value constraints the server enforces
/// under `limits` (ranges, id patterns, enums), so that generated clients
/// and fuzzers produce requests that pass validation.
pub fn openapi_json_for(limits: &Limits) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    constrain(&mut doc, limits);
    let mut s =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// What sandbox, workspace and template ids look like.
pub const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";

/// Standard base64 with padding (what `content` and `stdin_b64` must be).
const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// Largest permission bits a mode may hold.
const MAX_MODE: u32 = 0o7777;

/// Writes the enforced constraints into the generated document.
fn constrain(doc: &mut Value, l: &Limits) {
    let statuses =
        json!(["starting", "running", "pausing", "paused", "resuming", "stopping", "dead"]);
    let rules: &[(&str, &str, Value)] = &[
        (
            "CreateSandboxBody",
            "memory_mb",
            json!({"minimum": l.min_memory_mb, "maximum": l.max_memory_mb, "default": l.default_memory_mb}),
        ),
        (
            "CreateSandboxBody",
            "vcpu_count",
            json!({"minimum": 1, "maximum": l.max_vcpu, "default": l.default_vcpu}),
        ),
        (
            "CreateSandboxBody",
            "template",
            json!({"pattern": ID_PATTERN}),
        ),
        (
            "CreateSandboxBody",
            "workspace_id",
            json!({"pattern": ID_PATTERN}),
        ),
        (
            "CreateSandboxBody",
            "timeout_sec",
            json!({"minimum": 0, "maximum": l.max_sandbox_timeout_sec}),
        ),
        (
            "CreateSandboxBody",
            "on_timeout",
            json!({"enum": ["destroy", "pause"]}),
        ),
        (
            "CreateSandboxBody",
            "metadata",
            json!({"maxProperties": locale2b_manager::MAX_METADATA_ENTRIES,
                   "propertyNames": {"minLength": 1, "maxLength": locale2b_manager::MAX_METADATA_KEY},
                   "additionalProperties": {"type": "string", "maxLength": locale2b_manager::MAX_METADATA_VALUE}}),
        ),
        (
            "NetworkBody",
            "mode",
            json!({"enum": ["none", "allowlist", "full"]}),
        ),
        (
            "SetTimeoutBody",
            "timeout_sec",
            json!({"minimum": 0, "maximum": l.max_sandbox_timeout_sec}),
        ),
        (
            "SandboxResponse",
            "on_timeout",
            json!({"enum": ["destroy", "pause"]}),
        ),
        (
            "ExecBody",
            "command",
            json!({"minLength": 1, "pattern": "\\S"}),
        ),
        (
            "ExecBody",
            "timeout_ms",
            json!({"minimum": 1, "maximum": l.max_exec_timeout_ms, "default": l.default_exec_timeout_ms}),
        ),
        (
            "ExecBody",
            "timeout_seconds",
            json!({"minimum": 1, "maximum": l.max_exec_timeout_ms / 1000}),
        ),
        ("WriteFileBody", "path", json!({"minLength": 1})),
        (
            "WriteFileBody",
            "mode",
            json!({"minimum": 0, "maximum": MAX_MODE}),
        ),
        ("MkdirBody", "path", json!({"minLength": 1})),
        (
            "MkdirBody",
            "mode",
            json!({"minimum": 0, "maximum": MAX_MODE}),
        ),
        ("DeleteFileBody", "path", json!({"minLength": 1})),
        ("SandboxResponse", "status", json!({"enum": statuses})),
    ];
    for (schema, field, extra) in rules {
        if let Some(Value::Object(prop)) =
            doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
        {
            if let Value::Object(extra) = extra {
                prop.extend(extra.clone());
            }
        }
    }
    // Fields that exclude each other, and content that must be base64.
    let base64 = json!({"pattern": BASE64_PATTERN, "contentEncoding": "base64"});
    let whole: &[(&str, Value)] = &[
        (
            "ExecBody",
            json!({"allOf": [
                {"not": {"required": ["timeout_ms", "timeout_seconds"]}},
                {"not": {"required": ["stdin", "stdin_b64"]}},
            ]}),
        ),
        (
            "WriteFileBody",
            json!({
                "if": {"properties": {"encoding": {"const": "utf-8"}}, "required": ["encoding"]},
                "else": {"properties": {"content": base64}},
            }),
        ),
    ];
    for (schema, extra) in whole {
        if let (Some(Value::Object(obj)), Value::Object(extra)) = (
            doc.pointer_mut(&format!("/components/schemas/{schema}")),
            extra,
        ) {
            obj.extend(extra.clone());
        }
    }
    if let Some(Value::Object(prop)) =
        doc.pointer_mut("/components/schemas/ExecBody/properties/stdin_b64")
    {
        if let Value::Object(b) = &base64 {
            prop.extend(b.clone());
        }
    }
    // Path ids and query parameters:
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for item in paths.values_mut() {
        let Value::Object(ops) = item else { continue };
        for op in ops.values_mut() {
            let Some(Value::Array(params)) = op.get_mut("parameters") else {
                continue;
            };
            for p in params {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                let place = p.get("in").and_then(Value::as_str).unwrap_or_default();
                let extra = match (place, name) {
                    ("path", "id") => json!({"pattern": ID_PATTERN}),
                    ("query", "path") => json!({"minLength": 1}),
                    ("query", "max_depth") => json!({"minimum": 1}),
                    _ => continue,
                };
                if let (Some(Value::Object(schema)), Value::Object(extra)) =
                    (p.get_mut("schema"), extra)
                {
                    schema.extend(extra);
                }
            }
        }
    }
}

/// `GET /openapi.json`: the spec with this server's limits.
pub async fn spec(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_json_for(&s.sandboxes().limits()),
    )
        .into_response()
}

const SWAGGER_CDN: &str = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5";
const REDOC_CDN: &str = "https://cdn.jsdelivr.net/npm/redoc@2/bundles";

fn asset_base(ui_dir: Option<&Path>, sub: &str, probe: &str, cdn: &str) -> String {
    if ui_dir.is_some_and(|d| d.join(sub).join(probe).is_file()) {
        format!("/ui-assets/{sub}")
    } else {
        cdn.to_owned()
    }
}

/// `GET /docs`: Swagger UI.
pub async fn swagger_page(State(s): State<AppState>) -> Html<String> {
    let base = asset_base(
        s.ui_dir(),
        "swagger-ui",
        "swagger-ui-bundle.js",
        SWAGGER_CDN,
    );
    Html(format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>locale2b API</title>
<link rel="stylesheet" href="{base}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{base}/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}});</script>
</body></html>
"##
    ))
}

/// `GET /redoc`: ReDoc.
pub async fn redoc_page(State(s): State<AppState>) -> Html<String> {
    let base = asset_base(s.ui_dir(), "redoc", "redoc.standalone.js", REDOC_CDN);
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>locale2b API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="{base}/redoc.standalone.js"></script>
</body></html>
"#
    ))
}

/// Maps a request path below `/ui-assets/` to a file under `ui_dir`, or
/// `None` when any component is not a plain name (no `..`, no hidden files,
/// no odd characters).
pub(crate) fn asset_path(ui_dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut out = ui_dir.to_path_buf();
    let mut any = false;
    for comp in rel.split('/') {
        let ok = !comp.is_empty()
            && !comp.starts_with('.')
            && comp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            return None;
        }
        out.push(comp);
        any = true;
    }
    any.then_some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `GET /ui-assets/{*path}`: static files of the UI pages.
pub async fn ui_asset(
    State(s): State<AppState>,
    AxPath(rel): AxPath<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NoRoute {
        method: "GET".into(),
        path: format!("/ui-assets/{rel}"),
    };
    let ui_dir = s.ui_dir().ok_or_else(not_found)?;
    let path = asset_path(ui_dir, &rel).ok_or_else(not_found)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&path)),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_paths_refuse_traversal() {
        let ui = Path::new("/base/ui");
        assert_eq!(
            asset_path(ui, "swagger-ui/swagger-ui.css"),
            Some(PathBuf::from("/base/ui/swagger-ui/swagger-ui.css"))
        );
        for bad in [
            "../api-key",
            "a/../../x",
            "",
            "a//b",
            ".hidden",
            "a/%2e%2e",
            "a\\b",
        ] {
            assert_eq!(asset_path(ui, bad), None, "{bad}");
        }
    }
}
