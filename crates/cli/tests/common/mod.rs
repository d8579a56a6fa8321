//! The real `locale2b serve` process, for tests that kill it.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const KEY: &str = "restart-test-key-42";

pub use locale2b_testkit::image_dir;

/// Kills every process (server, VMs) mentioning the base dir, so a failed
/// assertion leaves nothing running.
pub struct KillOnDrop(pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        locale2b_testkit::kill_mentioning(&self.0);
    }
}

/// A base directory in /tmp with the image under test as `default`.
pub fn base_dir(image: &Path) -> tempfile::TempDir {
    let base = tempfile::Builder::new()
        .prefix("l2br")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir_all(base.path().join("images")).unwrap();
    std::os::unix::fs::symlink(image, base.path().join("images/default")).unwrap();
    base
}

/// Starts the server with `env` on top of the test settings; answers the
/// child and its URL (read from its log).
pub fn start(base: &Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locale2b"));
    cmd.arg("serve")
        .env("LOCALE2B_BASE_DIR", base)
        .env("LOCALE2B_PORT", "0")
        .env("LOCALE2B_API_KEY", KEY)
        .env("LOCALE2B_VMM", "qemu")
        .env("LOCALE2B_BOOT_TIMEOUT_SEC", "120")
        .env("LOCALE2B_DISK_SIZE_MB", "1024")
        .env("LOCALE2B_MEMORY_BUDGET_MB", "4096")
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Every line also goes to <base>/server.log, for tests that read the log.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("server.log"))
        .unwrap();
    std::thread::spawn(move || {
        use std::io::Write as _;
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
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
        .recv_timeout(Duration::from_secs(120))
        .expect("server did not report its address");
    (child, format!("http://{addr}"))
}

/// One API call; the status and the JSON body (`Null` when none).
pub async fn call(
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
