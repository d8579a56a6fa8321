//! kill -9 of the real `locale2b serve` process with three running
//! sandboxes; after a restart all three are listed and usable.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "restart-test-key-42";

/// Kills every process (server, VMs) mentioning the base dir, so a failed
/// assertion leaves nothing running.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.0.to_string_lossy()])
            .status();
    }
}

use locale2b_testkit::image_dir;

/// Starts the server; returns the child and its URL (read from its log).
fn start(base: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_locale2b"))
        .arg("serve")
        .env("LOCALE2B_BASE_DIR", base)
        .env("LOCALE2B_PORT", "0")
        .env("LOCALE2B_API_KEY", KEY)
        .env("LOCALE2B_VMM", "qemu")
        .env("LOCALE2B_BOOT_TIMEOUT_SEC", "120")
        .env("LOCALE2B_DISK_SIZE_MB", "1024")
        .env("LOCALE2B_MEMORY_BUDGET_MB", "4096")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server did not report its address");
    (child, format!("http://{addr}"))
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).header("X-API-Key", KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_server_keeps_sandboxes_usable() {
    use reqwest::Method as M;
    let Some(image) = image_dir() else { return };
    let base = tempfile::Builder::new()
        .prefix("l2br")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir_all(base.path().join("images")).unwrap();
    std::os::unix::fs::symlink(&image, base.path().join("images/default")).unwrap();
    let http = reqwest::Client::new();
    let _cleanup = KillOnDrop(base.path().to_path_buf());

    let (mut server, url) = start(base.path());
    let mut ids = Vec::new();
    for i in 0..3 {
        let (st, v) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes"),
            Some(json!({"memory_mb": 256})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let id = v["sandbox_id"].as_str().unwrap().to_owned();
        let (st, _) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes/{id}/exec"),
            Some(json!({"command": format!("echo {i} > /workspace/n")})),
        )
        .await;
        assert_eq!(st, 200);
        ids.push(id);
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (mut server, url) = start(base.path());
    let (st, list) = call(&http, M::GET, format!("{url}/sandboxes"), None).await;
    assert_eq!(st, 200);
    let listed: Vec<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandbox_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{list}");
    for (i, id) in ids.iter().enumerate() {
        assert!(listed.contains(&id.as_str()));
        let (st, out) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes/{id}/exec"),
            Some(json!({"command": "cat /workspace/n"})),
        )
        .await;
        assert_eq!(st, 200, "{out}");
        assert_eq!(out["stdout"], format!("{i}\n"));
    }
    for id in &ids {
        let (st, _) = call(&http, M::DELETE, format!("{url}/sandboxes/{id}"), None).await;
        assert_eq!(st, 200);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
