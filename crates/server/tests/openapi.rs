//! `docs/openapi.json` must equal the spec generated from the code.
//! Regenerate with `LOCALE2B_UPDATE_OPENAPI=1 cargo test -p locale2b-server --test openapi`.

use std::path::PathBuf;

#[test]
fn openapi_spec_matches_committed_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = locale2b_server::openapi::openapi_json();
    if std::env::var_os("LOCALE2B_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        if let Err(e) = std::fs::write(&path, &generated) {
            panic!("cannot write {}: {e}", path.display());
        }
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the code; regenerate it with \
         `LOCALE2B_UPDATE_OPENAPI=1 cargo test -p locale2b-server --test openapi` and commit it",
        path.display()
    );
}

#[test]
fn spec_covers_every_compymac_call() {
    let spec: serde_json::Value =
        serde_json::from_str(&locale2b_server::openapi::openapi_json()).expect("valid JSON");
    for (path, method) in [
        ("/health", "get"),
        ("/sandboxes", "post"),
        ("/sandboxes", "get"),
        ("/sandboxes/{id}", "delete"),
        ("/sandboxes/{id}/exec", "post"),
        ("/sandboxes/{id}/files/write", "post"),
        ("/sandboxes/{id}/files/read", "get"),
        ("/sandboxes/{id}/files/list", "get"),
        ("/sandboxes/{id}/pause", "post"),
        ("/sandboxes/{id}/resume", "post"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} missing from the spec"
        );
    }
    assert!(spec["components"]["securitySchemes"]["api_key"].is_object());
}
