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
        handlers::create_sandbox,
        handlers::list_sandboxes,
        handlers::get_sandbox,
        handlers::destroy_sandbox,
        handlers::pause_sandbox,
        handlers::resume_sandbox,
        handlers::exec,
        handlers::write_file,
        handlers::read_file,
        handlers::list_files,
        handlers::stat,
        handlers::mkdir,
        handlers::delete_file,
        handlers::delete_file_post,
        handlers::upload,
        handlers::list_workspaces,
        handlers::get_workspace,
        handlers::delete_workspace,
        handlers::ports_not_implemented,
    ),
    components(schemas(crate::error::ErrorResponse, crate::error::ErrorDetail, Encoding)),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "health", description = "Liveness and capacity"),
        (name = "sandboxes", description = "Sandbox lifecycle"),
        (name = "commands", description = "Running commands"),
        (name = "files", description = "Files inside a sandbox"),
        (name = "workspaces", description = "Persistent workspaces"),
        (name = "ports", description = "Port forwarding (not implemented yet)"),
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

/// The spec as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// `GET /openapi.json`.
pub async fn spec() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_json(),
    )
        .into_response()
}

const SWAGGER_CDN: &str = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5";
const REDOC_CDN: &str = "https://cdn.jsdelivr.net/npm/redoc@2/bundles";

fn asset_base(ui_dir: &Path, sub: &str, probe: &str, cdn: &str) -> String {
    if ui_dir.join(sub).join(probe).is_file() {
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
    let path = asset_path(s.ui_dir(), &rel).ok_or_else(not_found)?;
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
