//! The router against a test double of the sandbox service: successful
//! guest calls (exec, read, write, list) go through the whole HTTP layer —
//! auth, extractors, translation, the error mapping — with no VM and no
//! socket, and the double records exactly what the handlers asked for.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use locale2b_config::{Secret, ServerConfig};
use locale2b_manager::{
    Capacity, CreateSandbox, ExecOutput, ExecSpec, FileInfo, FileKind, FileRead, GuestErrorKind,
    GuestOps, Limits, Listing, ManagerError, Output, OutputChunk, OutputEvent, OutputEvents,
    OutputStream, ProcessExit, ProcessInfo, ProcessSelector, ProcessSpec, PtySize, Result,
    SandboxInfo, SandboxService, SandboxStatus, WorkspaceInfo, WriteFile, Written,
};
use locale2b_protocol::{SandboxId, WorkspaceId};
use locale2b_server::{router, ApiKeys, AppState};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const KEY: &str = "double-key-0123456789abcdef";
const KNOWN: &str = "sb-known";

/// What the handlers asked the double for.
#[derive(Debug, Default)]
struct Calls {
    execs: Vec<ExecSpec>,
    writes: Vec<WriteFile>,
    reads: Vec<(String, u64, Option<u64>)>,
}

#[derive(Debug, Default)]
struct Double {
    calls: Arc<Mutex<Calls>>,
    /// Sandboxes belong to the key their id names ([`owned_info`]).
    owned: bool,
    creates: Mutex<Vec<CreateSandbox>>,
}

impl Double {
    fn info(&self, id: &str) -> SandboxInfo {
        if self.owned {
            owned_info(id)
        } else {
            info(id)
        }
    }
}

#[derive(Debug)]
struct DoubleGuest {
    known: bool,
    calls: Arc<Mutex<Calls>>,
}

fn info(id: &str) -> SandboxInfo {
    SandboxInfo {
        sandbox_id: id.parse().unwrap(),
        workspace_id: "ws-1".parse().unwrap(),
        status: SandboxStatus::Running,
        memory_mb: 256,
        vcpu_count: 1,
        template: "default".into(),
        backend: locale2b_vmm::VmmKind::Qemu,
        created_at: "2026-12-01T00:00:00Z".into(),
        updated_at: "2026-12-01T00:00:00Z".into(),
        error: None,
        boot_ms: Some(1),
        end_at: None,
        timeout_sec: None,
        on_timeout: locale2b_manager::OnTimeout::Destroy,
        metadata: Default::default(),
        idle_timeout_sec: Some(3600),
        auto_resume: false,
        paused_at: None,
        paused_by: None,
        disk_size_mb: Some(1024),
        boot: None,
        forked_from: None,
        owner: None,
        access_token: None,
        network: Default::default(),
        route_all_ports: None,
    }
}

/// [`info`] owned by the key its id names (`sb-alice-1` → `alice`).
fn owned_info(id: &str) -> SandboxInfo {
    let owner = id.split('-').nth(1).map(str::to_owned);
    SandboxInfo { owner, ..info(id) }
}

#[async_trait]
impl SandboxService for Double {
    async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo> {
        let info = SandboxInfo {
            route_all_ports: req.route_all_ports.clone(),
            ..self.info(KNOWN)
        };
        self.creates.lock().unwrap().push(req);
        Ok(info)
    }
    async fn get(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Ok(self.info(id.as_str()))
    }
    async fn list(&self) -> Vec<SandboxInfo> {
        if self.owned {
            return ["sb-alice-1", "sb-bob-1"].map(owned_info).to_vec();
        }
        vec![info(KNOWN)]
    }
    async fn destroy(&self, _id: &SandboxId) -> Result<()> {
        Ok(())
    }
    async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Ok(info(id.as_str()))
    }
    async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo> {
        Ok(info(id.as_str()))
    }
    async fn set_timeout(&self, id: &SandboxId, _timeout_sec: u64) -> Result<SandboxInfo> {
        Ok(info(id.as_str()))
    }
    async fn capacity(&self) -> Capacity {
        Capacity {
            active_sandboxes: 1,
            paused_sandboxes: 0,
            max_sandboxes: 2,
            can_create_default: true,
            memory_used_mb: 256,
            memory_measured_mb: 120,
            memory_available_mb: 256,
            memory_overcommit: false,
            memory_budget_mb: 512,
            backend: locale2b_vmm::VmmKind::Qemu,
            accel: "tcg".into(),
            vmm_rss_mb: 100,
            vmm_pss_mb: 90,
            cgroups: "none".into(),
            disk_free_mb: Some(1000),
        }
    }
    fn limits(&self) -> Limits {
        locale2b_server::openapi::default_limits()
    }
    fn guest(&self, id: &SandboxId) -> Arc<dyn GuestOps> {
        Arc::new(DoubleGuest {
            known: id.as_str() == KNOWN,
            calls: self.calls.clone(),
        })
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        Ok(Vec::new())
    }
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo> {
        Err(ManagerError::NotFound {
            kind: "workspace",
            id: id.to_string(),
        })
    }
    async fn delete_workspace(&self, _id: &WorkspaceId) -> Result<()> {
        Ok(())
    }
}

impl DoubleGuest {
    fn check(&self) -> Result<()> {
        if self.known {
            Ok(())
        } else {
            Err(ManagerError::NotFound {
                kind: "sandbox",
                id: "unknown".into(),
            })
        }
    }
}

#[async_trait]
impl GuestOps for DoubleGuest {
    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput> {
        self.check()?;
        let out = ExecOutput {
            stdout: format!("ran {}\n", spec.command),
            stderr: String::new(),
            exit_code: Some(7),
            signal: None,
            timed_out: false,
            truncated: false,
            duration_ms: 3,
            error: None,
        };
        self.calls.lock().unwrap().execs.push(spec);
        Ok(out)
    }
    async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        _max: u64,
    ) -> Result<FileRead> {
        self.check()?;
        self.calls
            .lock()
            .unwrap()
            .reads
            .push((path.to_owned(), offset, length));
        if path == "/missing" {
            return Err(ManagerError::Guest {
                kind: GuestErrorKind::NotFound,
                message: "/missing: no such file".into(),
            });
        }
        Ok(FileRead {
            data: b"hello \xff bytes".to_vec(),
            offset,
            size: 13,
            eof: true,
        })
    }
    async fn download(
        &self,
        _path: &str,
        _offset: u64,
        _length: Option<u64>,
    ) -> Result<locale2b_manager::Download> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn checksum(&self, _path: &str) -> Result<locale2b_manager::Checksum> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn write_file(&self, file: WriteFile) -> Result<Written> {
        self.check()?;
        let w = Written {
            path: file.path.clone(),
            size: file.data.len() as u64,
            sha256: None,
        };
        self.calls.lock().unwrap().writes.push(file);
        Ok(w)
    }
    async fn list_files(&self, path: &str, _r: bool, _d: Option<u32>) -> Result<Listing> {
        self.check()?;
        Ok(Listing {
            entries: vec![FileInfo {
                name: "a.txt".into(),
                path: format!("{path}/a.txt"),
                kind: FileKind::File,
                size: 5,
                mode: 0o644,
                mtime_ms: 0,
                symlink_target: None,
                owner: None,
                group: None,
            }],
            truncated: false,
        })
    }
    async fn stat(&self, _path: &str) -> Result<FileInfo> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn mkdir(&self, _dir: locale2b_manager::MakeDir) -> Result<FileInfo> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn upload<'a>(
        &self,
        _up: locale2b_manager::Upload,
        _body: locale2b_manager::ByteStream<'a>,
    ) -> Result<Written> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn watch_dir(&self, _path: &str, _recursive: bool) -> Result<locale2b_manager::FsEvents> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn delete(&self, _path: &str, _r: bool) -> Result<()> {
        Ok(())
    }
    async fn rename(&self, _from: &str, _to: &str) -> Result<()> {
        Ok(())
    }
    async fn exec_stream(&self, spec: ExecSpec) -> Result<OutputEvents> {
        self.check()?;
        let events = vec![
            Ok(OutputEvent::Started { pid: 77 }),
            Ok(OutputEvent::Data(OutputChunk {
                stream: OutputStream::Stdout,
                cursor: 0,
                data: format!("ran {}\n", spec.command).into_bytes(),
            })),
            Ok(OutputEvent::Data(OutputChunk {
                stream: OutputStream::Stderr,
                cursor: 4 + spec.command.len() as u64,
                data: b"warn\n".to_vec(),
            })),
            Ok(OutputEvent::End {
                next_cursor: 9 + spec.command.len() as u64,
                exit: Some(ProcessExit {
                    exit_code: Some(3),
                    signal: None,
                    timed_out: false,
                    duration_ms: 5,
                }),
            }),
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
    async fn start_process(&self, _spec: ProcessSpec) -> Result<ProcessInfo> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn list_processes(&self) -> Result<Vec<ProcessInfo>> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn process(&self, _sel: &ProcessSelector) -> Result<ProcessInfo> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn read_output(
        &self,
        _sel: &ProcessSelector,
        cursor: u64,
        _max: Option<u64>,
    ) -> Result<Output> {
        self.check()?;
        Ok(Output {
            cursor: cursor + 10,
            dropped: 10,
            chunks: vec![
                OutputChunk {
                    stream: OutputStream::Stdout,
                    cursor: cursor + 10,
                    data: b"ab".to_vec(),
                },
                OutputChunk {
                    stream: OutputStream::Stderr,
                    cursor: cursor + 12,
                    data: b"E".to_vec(),
                },
                OutputChunk {
                    stream: OutputStream::Stdout,
                    cursor: cursor + 13,
                    data: b"c".to_vec(),
                },
            ],
            next_cursor: cursor + 14,
            exit: None,
            complete: false,
        })
    }
    async fn follow_output(&self, _sel: &ProcessSelector, _cursor: u64) -> Result<OutputEvents> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn write_stdin(
        &self,
        _sel: &ProcessSelector,
        _data: Vec<u8>,
        _close: bool,
    ) -> Result<()> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn signal(&self, _sel: &ProcessSelector, _signal: i32) -> Result<()> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn resize(&self, _sel: &ProcessSelector, _size: PtySize) -> Result<()> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
    async fn remove_process(&self, _sel: &ProcessSelector) -> Result<()> {
        Err(ManagerError::Conflict("not in this double".into()))
    }
}

fn app(double: Arc<Double>, server: ServerConfig) -> axum::Router {
    let keys = ApiKeys::new(vec![("t".into(), Secret::new(KEY))]);
    router(AppState::new(double, keys, &server))
}

fn server_config() -> ServerConfig {
    ServerConfig {
        rate_limit_per_sec: 0,
        ..ServerConfig::default()
    }
}

async fn send(app: &axum::Router, r: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(r).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn post(uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("x-api-key", KEY)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .header("x-api-key", KEY)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn successful_exec_goes_through_the_http_layer() {
    let double = Arc::new(Double::default());
    let app = app(double.clone(), server_config());
    let (status, body) = send(
        &app,
        post(
            &format!("/sandboxes/{KNOWN}/exec"),
            &json!({"command": "echo hi", "working_dir": "/tmp", "timeout_seconds": 2,
                    "stdin": "input", "env": {"A": "1"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "ran echo hi\n");
    assert_eq!(body["exit_code"], 7);
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["timed_out"], false);
    let calls = double.calls.lock().unwrap();
    let spec = &calls.execs[0];
    assert_eq!(spec.command, "echo hi");
    assert_eq!(spec.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(spec.timeout, Some(Duration::from_secs(2)));
    assert_eq!(spec.stdin.as_deref(), Some(&b"input"[..]));
    assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn successful_write_and_read_translate_encodings() {
    let double = Arc::new(Double::default());
    let app = app(double.clone(), server_config());
    let (status, body) = send(
        &app,
        post(
            &format!("/sandboxes/{KNOWN}/files/write"),
            &json!({"path": "/workspace/a.bin", "content": "AAEC/w=="}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"path": "/workspace/a.bin", "size": 4}));
    let (status, _) = send(
        &app,
        post(
            &format!("/sandboxes/{KNOWN}/files/write"),
            &json!({"path": "/workspace/t.txt", "content": "plain text", "encoding": "utf-8"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    {
        let calls = double.calls.lock().unwrap();
        assert_eq!(calls.writes[0].data, vec![0, 1, 2, 255]);
        assert!(calls.writes[0].create_parents, "default create_parents");
        assert_eq!(calls.writes[1].data, b"plain text");
    }

    let (status, body) = send(
        &app,
        get(&format!(
            "/sandboxes/{KNOWN}/files/read?path=/workspace/a.bin&offset=2&length=5"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    {
        use base64::Engine as _;
        let want = base64::engine::general_purpose::STANDARD.encode(b"hello \xff bytes");
        assert_eq!(body["content"], want);
    }
    assert_eq!(body["encoding"], "base64");
    assert_eq!(body["offset"], 2);
    assert_eq!(body["eof"], true);
    assert_eq!(
        double.calls.lock().unwrap().reads[0],
        ("/workspace/a.bin".to_owned(), 2, Some(5))
    );
    // The same bytes as utf-8 are refused (0xff), naming the fix.
    let (status, body) = send(
        &app,
        get(&format!(
            "/sandboxes/{KNOWN}/files/read?path=/workspace/a.bin&encoding=utf-8"
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_encoding");
    // A guest's not-found is a 404 with the guest's message.
    let (status, body) = send(
        &app,
        get(&format!("/sandboxes/{KNOWN}/files/read?path=/missing")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], "/missing: no such file");
}

#[tokio::test]
async fn listing_and_unknown_sandbox() {
    let double = Arc::new(Double::default());
    let app = app(double, server_config());
    let (status, body) = send(&app, get(&format!("/sandboxes/{KNOWN}/files/list"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/workspace");
    assert_eq!(body["files"][0]["path"], "/workspace/a.txt");
    assert_eq!(body["files"][0]["is_directory"], false);
    let (status, body) = send(
        &app,
        post("/sandboxes/sb-other/exec", &json!({"command": "true"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    // A malformed id in the path is a 400 naming the rule.
    let (status, body) = send(&app, get("/sandboxes/-bad-/files/list")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_input");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("letter or digit"),
        "{body}"
    );
}

#[tokio::test]
async fn configured_api_key_header_is_accepted() {
    let double = Arc::new(Double::default());
    let app = app(
        double,
        ServerConfig {
            api_key_header: Some("X-Compymac-Key".into()),
            ..server_config()
        },
    );
    let r = |name: &str| {
        Request::builder()
            .uri("/sandboxes")
            .header(name, KEY)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, r("X-Compymac-Key")).await.0, StatusCode::OK);
    assert_eq!(send(&app, r("x-api-key")).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, r("X-Other-Key")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let wrong = Request::builder()
        .uri("/sandboxes")
        .header("X-Compymac-Key", "wrong-key-wrong-key")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn streamed_exec_is_ndjson_in_order() {
    let double = Arc::new(Double::default());
    let app = app(double, server_config());
    let resp = app
        .clone()
        .oneshot(post(
            &format!("/sandboxes/{KNOWN}/exec"),
            &json!({"command": "make", "stream": true}),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let lines: Vec<Value> = String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["start", "stdout", "stderr", "end"]);
    assert_eq!(lines[0]["pid"], 77);
    assert_eq!(lines[1]["data"], "ran make\n");
    assert_eq!(lines[2]["cursor"], 8);
    assert_eq!(lines[3]["exit_code"], 3);
}

#[tokio::test]
async fn output_by_cursor_keeps_streams_apart_and_reports_drops() {
    let double = Arc::new(Double::default());
    let app = app(double, server_config());
    let (status, body) = send(
        &app,
        get(&format!("/sandboxes/{KNOWN}/processes/42/output?cursor=5")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cursor"], 15);
    assert_eq!(body["dropped"], 10);
    assert_eq!(body["stdout"], "abc");
    assert_eq!(body["stderr"], "E");
    assert_eq!(body["next_cursor"], 19);
    assert_eq!(body["encoding"], "utf-8");
    let streams: Vec<&str> = body["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["stdout", "stderr", "stdout"]);
    // A bad process id is a 400 before anything reaches the sandbox.
    let (status, body) = send(
        &app,
        get(&format!("/sandboxes/{KNOWN}/processes/9tag/output")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Every route `docs/e2b-openapi.json` lists is served: none of them
/// reaches a fallback (no route, no such method), and the native API's
/// routes are not shadowed by the E2B dispatch.
#[tokio::test]
async fn every_listed_e2b_route_is_served() {
    use locale2b_server::e2b::spec::{CONTROL, ENVD};
    let app = app(Arc::new(Double::default()), server_config());
    let fallback = |body: &Value| {
        let m = body["message"].as_str().unwrap_or_default();
        m.contains("no E2B API route")
            || m.contains("has no method")
            || m.contains("envd has no")
            || m.contains("is not allowed")
    };
    for route in CONTROL {
        let path = format!("/e2b{}", route.path.replace("{id}", KNOWN));
        let req = Request::builder()
            .method(route.method.to_uppercase().as_str())
            .uri(&path)
            .header("x-api-key", KEY)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, body) = send(&app, req).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert!(!fallback(&body), "{} {path}: {body}", route.method);
    }
    for route in ENVD {
        let mut req = Request::builder()
            .method(route.method.to_uppercase().as_str())
            .uri(format!("{}?path=/x", route.path))
            .header("e2b-sandbox-id", KNOWN);
        req = if route.path.contains('.') {
            req.header(header::CONTENT_TYPE, "application/json")
        } else {
            req.header(header::CONTENT_TYPE, "application/octet-stream")
        };
        let (status, body) = send(&app, req.body(Body::from("{}")).unwrap()).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{}", route.path);
        assert!(!fallback(&body), "{} {}: {body}", route.method, route.path);
    }
    // Without the header, the native API answers as before.
    let (status, body) = send(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["status"].is_string());
    // And unknown E2B paths get E2B's error shape.
    let (status, body) = send(&app, get("/e2b/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 404);
}

/// A request as key `key` (`alice`, `bob` or `root`).
fn as_key(method: Method, uri: &str, key: &str) -> Request<Body> {
    let body = if method == Method::POST {
        Body::from(r#"{"command": "true", "path": "/tmp/x", "content": ""}"#)
    } else {
        Body::empty()
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", format!("{key}-secret-key-0123456789"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn a_key_sees_only_its_own_sandboxes_and_an_admin_key_sees_all() {
    let double = Arc::new(Double {
        owned: true,
        ..Double::default()
    });
    let keys = ApiKeys::new(
        ["alice", "bob", "root"]
            .map(|n| {
                (
                    n.to_owned(),
                    Secret::new(format!("{n}-secret-key-0123456789")),
                )
            })
            .to_vec(),
    );
    let server = ServerConfig {
        admin_keys: "root".into(),
        ..server_config()
    };
    let app = router(AppState::new(double.clone(), keys, &server));

    // Every route of bob's sandbox is a 404 for alice, with the message of
    // a sandbox that does not exist.
    let routes = [
        (Method::GET, "/sandboxes/sb-bob-1"),
        (Method::DELETE, "/sandboxes/sb-bob-1"),
        (Method::POST, "/sandboxes/sb-bob-1/exec"),
        (Method::POST, "/sandboxes/sb-bob-1/pause"),
        (Method::POST, "/sandboxes/sb-bob-1/resume"),
        (Method::POST, "/sandboxes/sb-bob-1/fork"),
        (
            Method::GET,
            "/sandboxes/sb-bob-1/files/read?path=/etc/hostname",
        ),
        (Method::GET, "/sandboxes/sb-bob-1/files/list"),
        (Method::POST, "/sandboxes/sb-bob-1/files/write"),
        (Method::GET, "/sandboxes/sb-bob-1/processes"),
        (Method::POST, "/sandboxes/sb-bob-1/processes"),
        (Method::GET, "/sandboxes/sb-bob-1/ports"),
        (Method::POST, "/sandboxes/sb-bob-1/ports/expose"),
        (Method::DELETE, "/sandboxes/sb-bob-1/ports/8000"),
        (Method::GET, "/sandboxes/sb-bob-1/metrics"),
    ];
    for (method, uri) in &routes {
        let (status, body) = send(&app, as_key(method.clone(), uri, "alice")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert_eq!(
            body["error"]["message"], "sandbox sb-bob-1 not found",
            "{method} {uri}"
        );
    }
    // The owner and the admin get past the check (whatever the route says then).
    for key in ["bob", "root"] {
        let (status, body) = send(&app, as_key(Method::GET, "/sandboxes/sb-bob-1", key)).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
        assert_eq!(body["owner"], "bob");
    }
    // Lists: one's own; the admin's: all.
    let ids = |body: &Value| -> Vec<String> {
        body["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandbox_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = send(&app, as_key(Method::GET, "/sandboxes", "alice")).await;
    assert_eq!(ids(&body), ["sb-alice-1"]);
    let (_, body) = send(&app, as_key(Method::GET, "/sandboxes", "root")).await;
    assert_eq!(ids(&body), ["sb-alice-1", "sb-bob-1"]);
    // A create records the key that made it.
    let r = Request::builder()
        .method(Method::POST)
        .uri("/sandboxes")
        .header("x-api-key", "alice-secret-key-0123456789")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = send(&app, r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        double.creates.lock().unwrap()[0].owner.as_deref(),
        Some("alice")
    );
    // Only its exposed ports are routed.
    assert_eq!(double.creates.lock().unwrap()[0].route_all_ports, None);
    assert_eq!(body["routed_ports"], "exposed", "{body}");
    // An E2B create routes every port; with allowPublicTraffic=false, with
    // a token, which the answer carries, with the domain get_host uses.
    for (network, token) in [
        (json!(null), false),
        (json!({"allowPublicTraffic": false}), true),
    ] {
        let r = Request::builder()
            .method(Method::POST)
            .uri("/e2b/sandboxes")
            .header(header::HOST, "127.0.0.1:18080")
            .header("x-api-key", "alice-secret-key-0123456789")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"templateID": "base", "network": network}).to_string(),
            ))
            .unwrap();
        let (status, body) = send(&app, r).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let made = double.creates.lock().unwrap().last().unwrap().clone();
        let routing = made
            .route_all_ports
            .expect("E2B sandboxes route every port");
        assert_eq!(routing.access_token.is_some(), token, "{network}");
        assert!(
            !made.network.unwrap_or_default().networked(),
            "{network}: no network"
        );
        assert_eq!(body["domain"], "localhost:18080", "{body}");
        assert_eq!(
            body["trafficAccessToken"],
            routing.access_token.map_or(Value::Null, Value::String)
        );
    }
}

/// The audit log through a real TCP server: one line per mutating call
/// (whatever its outcome) and per failed authentication, none for reads,
/// with who, from where, what, the outcome and the request id; then a
/// source guessing keys is throttled while others are not.
#[tokio::test]
async fn mutating_calls_and_failed_authentications_are_audited_and_key_guessing_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let server = ServerConfig {
        auth_failures_per_min: 20,
        ..server_config()
    };
    let keys = ApiKeys::new(vec![("agent-a".into(), Secret::new(KEY))]);
    let state = AppState::new(Arc::new(Double::default()), keys, &server);
    state
        .set_audit_log(locale2b_server::audit::AuditLog::open(&path, 1 << 20, 2).unwrap())
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(locale2b_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // Mutating calls, answered 200 and 4xx alike: one line each.
    let calls = [
        (
            Method::POST,
            format!("/sandboxes/{KNOWN}/exec"),
            json!({"command": "true"}),
            200,
        ),
        (
            Method::POST,
            "/sandboxes/sb-nope/exec".to_owned(),
            json!({"command": "true"}),
            404,
        ),
        (
            Method::POST,
            format!("/sandboxes/{KNOWN}/files/write"),
            json!({"path": "/w/secret.txt", "content": "c2VjcmV0", "encoding": "base64"}),
            200,
        ),
        (
            Method::DELETE,
            "/workspaces/ws-1".to_owned(),
            Value::Null,
            0,
        ),
    ];
    let mut ids = Vec::new();
    for (method, uri, body, want) in &calls {
        let mut r = http
            .request(method.clone(), format!("{base}{uri}?path=/w/q"))
            .header("x-api-key", KEY);
        if !body.is_null() {
            r = r.json(body);
        }
        let resp = r.send().await.unwrap();
        if *want != 0 {
            assert_eq!(resp.status().as_u16(), *want, "{method} {uri}");
        }
        ids.push((
            resp.status().as_u16(),
            resp.headers()["x-request-id"].to_str().unwrap().to_owned(),
        ));
    }
    // Reads are not audited.
    let r = http
        .get(format!("{base}/sandboxes"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = lines();
    assert_eq!(
        got.len(),
        calls.len(),
        "one line per mutating call: {got:#?}"
    );
    for (((method, uri, _, _), (status, request_id)), line) in calls.iter().zip(&ids).zip(&got) {
        assert_eq!(line["key"], "agent-a");
        assert_eq!(line["method"], method.as_str());
        assert_eq!(line["route"], uri.as_str(), "the path, without the query");
        assert_eq!(line["status"], *status);
        assert_eq!(line["outcome"], if *status < 400 { "ok" } else { "error" });
        assert_eq!(line["request_id"], request_id.as_str());
        assert!(
            line["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(got[0]["sandbox_id"], KNOWN);
    assert_eq!(got[3]["workspace_id"], "ws-1");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(KEY) && !text.contains("c2VjcmV0") && !text.contains("/w/q"),
        "no secrets, contents or queries: {text}"
    );

    // Wrong keys: each one a line with no key; from the 21st on, the
    // source is refused without its key being checked, even a right one.
    let mut statuses = Vec::new();
    for i in 0..100 {
        let r = http
            .post(format!("{base}/sandboxes/{KNOWN}/exec"))
            .header("x-api-key", format!("guess-{i}"))
            .json(&json!({"command": "true"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = http
        .get(format!("{base}/sandboxes"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the source stays throttled for the minute");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "auth_throttled");
    let got = lines();
    let failed: Vec<&Value> = got[calls.len()..].iter().collect();
    assert_eq!(failed.len(), 101, "one line per refused request");
    assert!(failed[..20]
        .iter()
        .all(|l| l["outcome"] == "unauthenticated" && l["key"].is_null() && l["status"] == 401));
    assert!(failed[20..]
        .iter()
        .all(|l| l["outcome"] == "throttled" && l["status"] == 429));
    assert!(
        !std::fs::read_to_string(&path).unwrap().contains("guess-"),
        "wrong keys are not logged"
    );
}
