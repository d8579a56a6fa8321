//! The real server on 127.0.0.1:0 over the real manager and the qemu
//! backend, for end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::field_reassign_with_default)]

use locale2b_config::{Config, Secret, VmmChoice};
use locale2b_manager::{backend, SandboxManager};
use locale2b_server::{load_or_create_api_keys, serve, AppState};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;

pub const KEY: &str = "e2e-test-key-0123456789";

pub use locale2b_testkit::image_dir;

pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    pub _base: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub async fn start(image: &std::path::Path, max_sandboxes: u32) -> Self {
        Self::start_with(image, max_sandboxes, |_| {}).await
    }

    /// [`Server::start`] with changes to the configuration.
    pub async fn start_with(
        image: &std::path::Path,
        max_sandboxes: u32,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let base = tempfile::Builder::new()
            .prefix("l2bs")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(base.path().join("images")).unwrap();
        std::os::unix::fs::symlink(image, base.path().join("images/default")).unwrap();
        let mut c = Config::default();
        c.vmm.vmm = VmmChoice::Qemu;
        c.server.api_key = Some(Secret::new(KEY));
        let m = &mut c.manager;
        m.base_dir = base.path().to_path_buf();
        m.boot_timeout_sec = 120;
        m.max_sandboxes = max_sandboxes;
        m.memory_budget_mb = 8192;
        m.disk_size_mb = 1024;
        m.shutdown_grace_sec = 3;
        configure(&mut c);
        let (vmm, report) = backend::build(&c.vmm, &c.manager).await.unwrap();
        let manager = SandboxManager::open(
            Arc::new(c.manager.clone()),
            vmm,
            backend::accel_name(&report),
        )
        .await
        .unwrap();
        let keys = load_or_create_api_keys(&c.server, &c.manager.base_dir).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(manager, keys, &c.server);
        let audit = c
            .server
            .audit_log
            .clone()
            .unwrap_or_else(|| base.path().join("audit.log"));
        state
            .set_audit_log(locale2b_server::audit::AuditLog::open(&audit, 1 << 20, 2).unwrap())
            .unwrap();
        tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            http: reqwest::Client::new(),
            _base: base,
            stop: Some(tx),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", KEY)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(KEY, method, path, body).await
    }

    /// [`Server::call`] with API key `key`.
    pub async fn call_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-API-Key", key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Server {
    /// Runs `command` in sandbox `id` (60 s limit), asserts it exited 0,
    /// answers its stdout.
    pub async fn exec_ok(&self, id: &str, command: &str) -> String {
        let (st, out) = self
            .call(
                reqwest::Method::POST,
                &format!("/sandboxes/{id}/exec"),
                Some(serde_json::json!({"command": command, "timeout_ms": 60_000})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{out}");
        assert_eq!(out["exit_code"], 0, "{command}: {out}");
        out["stdout"].as_str().unwrap().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Never leave VMs behind when an assertion failed half-way.
        locale2b_testkit::kill_mentioning(self._base.path());
    }
}

pub mod fake_internet;
