//! `docs/openapi.json` and `docs/e2b-openapi.json` must equal the documents generated from the code.
//! Regenerate with `LOCALE2B_UPDATE_OPENAPI=1 cargo test -p locale2b-server --test openapi`.

use std::path::PathBuf;

/// Compares `docs/<name>` with `generated` (or rewrites it with
/// `LOCALE2B_UPDATE_OPENAPI=1`).
fn matches_committed(name: &str, generated: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    if std::env::var_os("LOCALE2B_UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        if let Err(e) = std::fs::write(&path, generated) {
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
fn openapi_spec_matches_committed_file() {
    matches_committed("openapi.json", &locale2b_server::openapi::openapi_json());
}

#[test]
fn e2b_spec_matches_committed_file() {
    matches_committed(
        "e2b-openapi.json",
        &locale2b_server::e2b::spec::openapi_json(),
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

#[test]
fn spec_states_the_enforced_constraints() {
    let mut limits = locale2b_server::openapi::default_limits();
    limits.min_memory_mb = 300;
    limits.max_vcpu = 2;
    let spec: serde_json::Value =
        serde_json::from_str(&locale2b_server::openapi::openapi_json_for(&limits)).expect("JSON");
    let create = &spec["components"]["schemas"]["CreateSandboxBody"]["properties"];
    assert_eq!(create["memory_mb"]["minimum"], 300);
    assert_eq!(create["vcpu_count"]["maximum"], 2);
    assert_eq!(
        create["workspace_id"]["pattern"],
        locale2b_server::openapi::ID_PATTERN
    );
    let exec = &spec["components"]["schemas"]["ExecBody"];
    assert_eq!(exec["properties"]["timeout_ms"]["minimum"], 1);
    assert!(
        exec["allOf"].is_array(),
        "timeout_ms/timeout_seconds exclusion"
    );
    // Every `{id}` path parameter carries the id pattern.
    let mut ids = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for op in item.as_object().expect("operations").values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" && p["name"] == "id" {
                    assert_eq!(
                        p["schema"]["pattern"],
                        locale2b_server::openapi::ID_PATTERN,
                        "{path}"
                    );
                    ids += 1;
                }
            }
        }
    }
    assert!(ids >= 15, "only {ids} id parameters");
}
