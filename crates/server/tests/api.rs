//! HTTP tests of the router without a socket or a VM: validation, auth,
//! limits and error mapping. The manager runs on a fake VMM whose `start`
//! always fails, so nothing here boots a guest.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use locale2b_config::{Config, Secret};
use locale2b_manager::SandboxManager;
use locale2b_server::{router, ApiKeys, AppState};
use locale2b_vmm::{SnapshotFiles, VmHandle, VmProcess, VmSpec, Vmm, VmmError, VmmKind};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

const KEY: &str = "test-key-0123456789abcdef";

#[derive(Debug)]
struct NoVmm;

#[async_trait]
impl Vmm for NoVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }
    async fn start(&self, _spec: &VmSpec) -> Result<Box<dyn VmHandle>, VmmError> {
        Err(VmmError::Unsupported("starting VMs in HTTP tests"))
    }
    async fn restore(
        &self,
        _spec: &VmSpec,
        _snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn VmHandle>, VmmError> {
        Err(VmmError::Unsupported("restoring VMs in HTTP tests"))
    }
    async fn attach(
        &self,
        _spec: &VmSpec,
        _process: &VmProcess,
    ) -> Result<Box<dyn VmHandle>, VmmError> {
        Err(VmmError::Unsupported("attaching VMs in HTTP tests"))
    }
}

struct Harness {
    app: Router,
    dir: tempfile::TempDir,
}

async fn harness_with(tweak: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.manager.base_dir = dir.path().to_owned();
    config.server.ui_dir = Some(dir.path().join("ui"));
    config.server.rate_limit_per_sec = 0;
    tweak(&mut config);
    config.validate().unwrap();
    let manager = SandboxManager::open(Arc::new(config.manager), Arc::new(NoVmm), "tcg".into())
        .await
        .unwrap();
    let keys = ApiKeys::new(vec![("test".into(), Secret::new(KEY))]);
    Harness {
        app: router(AppState::new(manager, keys, &config.server)),
        dir,
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", KEY)
}

fn json_req(method: Method, uri: &str, body: &Value) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(h: &Harness, r: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = h.app.clone().oneshot(r).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

/// Asserts the common error shape and returns (code, message).
fn error_of(body: &Value) -> (String, String) {
    let e = &body["error"];
    let code = e["code"]
        .as_str()
        .expect("error.code is a string")
        .to_owned();
    let msg = e["message"]
        .as_str()
        .expect("error.message is a string")
        .to_owned();
    (code, msg)
}

#[tokio::test]
async fn health_is_public_and_has_capacity_fields() {
    let h = harness().await;
    let r = Request::get("/health").body(Body::empty()).unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "status",
        "active_sandboxes",
        "paused_sandboxes",
        "max_sandboxes",
        "memory_used_mb",
        "memory_available_mb",
        "memory_budget_mb",
        "backend",
        "accel",
        "version",
    ] {
        assert!(body.get(field).is_some(), "missing {field} in {body}");
    }
    assert!(matches!(
        body["status"].as_str(),
        Some("healthy" | "degraded")
    ));
    assert_eq!(body["backend"], "qemu");
    assert_eq!(body["accel"], "tcg");
    assert_eq!(body["max_sandboxes"], 20);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_www_authenticate() {
    let h = harness().await;
    let no_key = Request::get("/sandboxes").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&h, no_key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let (code, msg) = error_of(&body);
    assert_eq!(code, "unauthorized");
    assert!(msg.contains("X-API-Key"), "{msg}");

    let wrong = Request::get("/sandboxes")
        .header("x-api-key", "not-the-key")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h, wrong).await.0, StatusCode::UNAUTHORIZED);

    let wrong_bearer = Request::get("/sandboxes")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h, wrong_bearer).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn both_key_headers_are_accepted() {
    let h = harness().await;
    let (status, _, body) = send(
        &h,
        req(Method::GET, "/sandboxes").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"sandboxes": []}));

    let bearer = Request::get("/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&h, bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["sandboxes"].is_array());
}

#[tokio::test]
async fn unknown_sandbox_is_404_in_error_shape() {
    let h = harness().await;
    for (m, uri) in [
        (Method::GET, "/sandboxes/sb-doesnotexist"),
        (Method::DELETE, "/sandboxes/sb-doesnotexist"),
        (
            Method::GET,
            "/sandboxes/sb-doesnotexist/files/read?path=/etc/hostname",
        ),
    ] {
        let (status, headers, body) = send(&h, req(m, uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        let (code, msg) = error_of(&body);
        assert_eq!(code, "not_found");
        assert!(msg.contains("sb-doesnotexist"), "{msg}");
        assert!(headers.contains_key("x-request-id"));
    }
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-doesnotexist/exec",
        &json!({"command": "true", "working_dir": "/workspace", "timeout_ms": 1000}),
    );
    assert_eq!(send(&h, r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_json_is_400_with_the_parser_message() {
    let h = harness().await;
    let r = req(Method::POST, "/sandboxes/sb-x/exec")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"command\": "))
        .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&body).0, "invalid_request");
}

#[tokio::test]
async fn missing_command_is_400_naming_the_field() {
    let h = harness().await;
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/exec",
        &json!({"working_dir": "/"}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, msg) = error_of(&body);
    assert!(msg.contains("command"), "{msg}");
}

#[tokio::test]
async fn conflicting_or_excessive_timeouts_are_400() {
    let h = harness().await;
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/exec",
        &json!({"command": "true", "timeout_ms": 1000, "timeout_seconds": 1}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("timeout_seconds"));

    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/exec",
        &json!({"command": "true", "timeout_seconds": 999_999}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("max_exec_timeout_sec"));
}

#[tokio::test]
async fn missing_content_type_is_415_saying_what_to_send() {
    let h = harness().await;
    let r = req(Method::POST, "/sandboxes")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(&body).1.contains("application/json"));
}

#[tokio::test]
async fn invalid_workspace_id_is_400() {
    let h = harness().await;
    let r = json_req(
        Method::POST,
        "/sandboxes",
        &json!({"workspace_id": "../etc"}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, msg) = error_of(&body);
    assert_eq!(code, "invalid_input");
    assert!(msg.contains("workspace id"), "{msg}");
}

#[tokio::test]
async fn memory_and_vcpu_out_of_range_are_400() {
    let h = harness().await;
    let r = json_req(Method::POST, "/sandboxes", &json!({"memory_mb": 16}));
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("memory_mb"));

    let r = json_req(Method::POST, "/sandboxes", &json!({"vcpu_count": 64}));
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("vcpu_count"));
}

#[tokio::test]
async fn plain_text_write_without_encoding_is_400_mentioning_encoding() {
    let h = harness().await;
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/files/write",
        &json!({"path": "/workspace/a.txt", "content": "hello world!"}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (code, msg) = error_of(&body);
    assert_eq!(code, "invalid_encoding");
    assert!(msg.contains("encoding") && msg.contains("utf-8"), "{msg}");

    // With the flag the request passes validation (and reaches the manager,
    // which does not know the sandbox).
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/files/write",
        &json!({"path": "/workspace/a.txt", "content": "hello world!", "encoding": "utf-8"}),
    );
    assert_eq!(send(&h, r).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let h = harness_with(|c| c.server.max_body_bytes = 1024).await;
    let big = "A".repeat(4096);
    let r = json_req(
        Method::POST,
        "/sandboxes/sb-x/files/write",
        &json!({"path": "/a", "content": big}),
    );
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body).0, "payload_too_large");
}

#[tokio::test]
async fn rate_limit_gives_429_with_retry_after() {
    let h = harness_with(|c| c.server.rate_limit_per_sec = 1).await;
    // Burst is 2x the rate: two requests pass, the third is refused (the
    // bucket refills 1 token/s, far slower than these calls).
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let (status, headers, body) = send(
            &h,
            req(Method::GET, "/sandboxes").body(Body::empty()).unwrap(),
        )
        .await;
        statuses.push(status);
        last = Some((headers, body));
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (headers, body) = last.unwrap();
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(error_of(&body).0, "rate_limited");
    // /health is not limited.
    let r = Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(send(&h, r).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_route_and_method_are_json_errors() {
    let h = harness().await;
    let (status, _, body) = send(&h, req(Method::GET, "/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body).0, "no_route");

    let (status, _, body) = send(
        &h,
        req(Method::PUT, "/sandboxes").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_of(&body).0, "method_not_allowed");
}

#[tokio::test]
async fn ports_check_their_input_first() {
    let h = harness().await;
    for port in [json!(0), json!(70000), json!(-1)] {
        let r = json_req(
            Method::POST,
            "/sandboxes/sb-x/ports/expose",
            &json!({ "port": port }),
        );
        let (status, _, body) = send(&h, r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{port}: {body}");
        let (_, msg) = error_of(&body);
        assert!(msg.contains("port"), "{msg}");
    }
    let r = req(Method::DELETE, "/sandboxes/sb-x/ports/http")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).1.contains("not a port number"), "{body}");
}

#[tokio::test]
async fn docs_pages_and_spec_are_public() {
    let h = harness().await;
    for uri in ["/docs", "/redoc", "/openapi.json"] {
        let resp = h
            .app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    }
    let (_, _, spec) = send(
        &h,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert!(spec["paths"]["/sandboxes/{id}/exec"]["post"].is_object());
    // Without installed assets the pages use the CDN.
    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/docs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("cdn.jsdelivr.net"));
}

#[tokio::test]
async fn ui_assets_are_served_from_base_dir_without_traversal() {
    let h = harness().await;
    let ui = h.dir.path().join("ui/swagger-ui");
    std::fs::create_dir_all(&ui).unwrap();
    std::fs::write(ui.join("swagger-ui-bundle.js"), "/* js */").unwrap();
    std::fs::write(h.dir.path().join("api-key"), "secret").unwrap();

    let resp = h
        .app
        .clone()
        .oneshot(
            Request::get("/ui-assets/swagger-ui/swagger-ui-bundle.js")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"/* js */");

    let resp = h
        .app
        .clone()
        .oneshot(
            Request::get("/ui-assets/../api-key")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = h
        .app
        .clone()
        .oneshot(Request::get("/docs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&html).contains("/ui-assets/swagger-ui/swagger-ui-bundle.js"));
}

#[tokio::test]
async fn create_failure_is_mapped_not_500_for_bad_input() {
    // A well-formed create reaches the manager; whatever it answers (the fake
    // VMM cannot start VMs) comes out in the error shape.
    let h = harness().await;
    let r = json_req(
        Method::POST,
        "/sandboxes",
        &json!({"memory_mb": 512, "vcpu_count": 1, "template": "default", "workspace_id": "session-1"}),
    );
    let (status, _, body) = send(&h, r).await;
    assert!(!status.is_success(), "{status}");
    let (code, _) = error_of(&body);
    assert!(!code.is_empty());
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        assert!(body["error"]["details"]["request_id"].is_string(), "{body}");
    }
}

fn multipart(part_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "XBOUNDARYX";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{part_name}\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn upload_over_max_upload_bytes_is_413() {
    let h = harness_with(|c| c.server.max_upload_bytes = 100).await;
    let (ct, body) = multipart("file", &[7u8; 1000]);
    let r = req(
        Method::POST,
        "/sandboxes/sb-x/files/upload?path=/workspace/f.bin",
    )
    .header(header::CONTENT_TYPE, ct)
    .body(Body::from(body))
    .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&body).1.contains("max_upload_bytes"));
}

#[tokio::test]
async fn upload_to_unknown_sandbox_is_404_and_without_file_part_is_400() {
    let h = harness().await;
    let (ct, body) = multipart("file", b"hello");
    let r = req(
        Method::POST,
        "/sandboxes/sb-x/files/upload?path=/workspace/f.bin",
    )
    .header(header::CONTENT_TYPE, ct)
    .body(Body::from(body))
    .unwrap();
    assert_eq!(send(&h, r).await.0, StatusCode::NOT_FOUND);

    let r = req(
        Method::POST,
        "/sandboxes/sb-x/files/upload?path=/workspace/f.bin",
    )
    .header(header::CONTENT_TYPE, "multipart/form-data; boundary=B")
    .body(Body::from("--B--\r\n"))
    .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("file"), "{body}");

    let r = req(Method::POST, "/sandboxes/sb-x/files/upload")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=B")
        .body(Body::from("--B--\r\n"))
        .unwrap();
    let (status, _, body) = send(&h, r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).1.contains("path"), "{body}");
}

/// The real server on 127.0.0.1:0 over a manager without VMs: its base
/// directory, address, stop sender and task.
async fn serve_on_socket(
    tweak: impl FnOnce(&mut Config),
) -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.manager.base_dir = dir.path().to_owned();
    tweak(&mut config);
    let manager = SandboxManager::open(Arc::new(config.manager), Arc::new(NoVmm), "tcg".into())
        .await
        .unwrap();
    let state = AppState::new(
        manager,
        ApiKeys::new(vec![("t".into(), Secret::new(KEY))]),
        &config.server,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(locale2b_server::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    (dir, addr, stop_tx, server)
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, addr, stop_tx, server) = serve_on_socket(|_| {}).await;

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_string(&mut reply),
    )
    .await
    .expect("reply within 10 s")
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"status\""), "{reply}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops within 10 s")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_client_still_sending_an_over_limit_body_receives_the_413() {
    // The server answers 413 as soon as it knows the body is too big; a
    // client that writes the whole body before reading (most HTTP clients)
    // must still get that answer, not a reset connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, addr, stop_tx, server) =
        serve_on_socket(|c| c.server.max_body_bytes = 1 << 20).await;

    let body = format!(r#"{{"path":"/a","content":"{}"}}"#, "A".repeat(24 << 20));
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /sandboxes/sb-x/files/write HTTP/1.1\r\nHost: test\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let sent = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await
    })
    .await
    .expect("the body is taken within 30 s");
    sent.expect("the whole body could be sent");
    let mut buf = vec![0u8; 64 << 10];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("files/content"), "{reply}");

    // The connection is still good for the next request.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_string(&mut rest),
    )
    .await
    .expect("reply within 10 s")
    .unwrap();
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
