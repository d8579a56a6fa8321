//! The benchmark's own server: `locale2b serve` in a fresh temporary base
//! directory, and the checks that nothing of it is left behind.

use super::api::Api;
use anyhow::{bail, Context};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Settings for [`OwnServer::start`].
#[derive(Debug)]
pub struct ServerSpec {
    /// Executable to run with `serve`.
    pub bin: PathBuf,
    /// Installed image to link as `images/default`.
    pub image_dir: PathBuf,
    /// `LOCALE2B_VMM`.
    pub vmm: String,
    /// `LOCALE2B_MAX_SANDBOXES`.
    pub max_sandboxes: u32,
    /// `LOCALE2B_MEMORY_BUDGET_MB`.
    pub memory_budget_mb: u64,
    /// How long to wait for `GET /health`.
    pub start_timeout: Duration,
}

/// A running server owned by the benchmark.
#[derive(Debug)]
pub struct OwnServer {
    child: Child,
    /// Temporary base directory (removed by [`OwnServer::stop`]).
    pub base: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The random API key.
    pub key: String,
    log_path: PathBuf,
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

impl OwnServer {
    /// Creates the base directory, starts the server and waits until
    /// `GET /health` answers.
    pub async fn start(spec: &ServerSpec) -> anyhow::Result<Self> {
        for f in ["vmlinux", "rootfs.ext4", "manifest.json"] {
            if !spec.image_dir.join(f).is_file() {
                bail!(
                    "no guest image at {} (missing {f}); build one with `locale2b image build` or pass --image-dir",
                    spec.image_dir.display()
                );
            }
        }
        // Short path: Unix socket paths live under it.
        let base = PathBuf::from(format!("/tmp/l2b-bench-{}", random_hex(8)));
        std::fs::create_dir(&base).with_context(|| format!("cannot create {}", base.display()))?;
        let images = base.join("images");
        std::fs::create_dir(&images)?;
        let image = std::fs::canonicalize(&spec.image_dir)?;
        std::os::unix::fs::symlink(&image, images.join("default"))?;
        let port = free_port()?;
        let key = random_hex(32);
        let log_path = base.join("server.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&spec.bin)
            .arg("serve")
            .env("LOCALE2B_BASE_DIR", &base)
            .env("LOCALE2B_HOST", "127.0.0.1")
            .env("LOCALE2B_PORT", port.to_string())
            .env("LOCALE2B_API_KEY", &key)
            .env("LOCALE2B_VMM", &spec.vmm)
            .env("LOCALE2B_MAX_SANDBOXES", spec.max_sandboxes.to_string())
            .env(
                "LOCALE2B_MEMORY_BUDGET_MB",
                spec.memory_budget_mb.to_string(),
            )
            .env("LOCALE2B_RATE_LIMIT_PER_SEC", "0")
            // The density phase fills the budget until the server refuses.
            .env("LOCALE2B_EVICTION", "none")
            // Room for the 64 MiB JSON transfers (base64: 86 MiB).
            .env("LOCALE2B_MAX_BODY_BYTES", (100u64 << 20).to_string())
            .env_remove("LOCALE2B_API_KEYS_FILE")
            .env_remove("LOCALE2B_CONFIG_FILE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} serve", spec.bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut server = Self {
            child,
            base,
            url,
            key,
            log_path,
        };
        if let Err(e) = server.wait_healthy(spec.start_timeout).await {
            let tail = server.log_tail(20);
            server.stop().await;
            return Err(e.context(format!("server log (tail):\n{tail}")));
        }
        Ok(server)
    }

    async fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let api = Api::new(&self.url, &self.key)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start ({status})");
            }
            match api
                .call(
                    reqwest::Method::GET,
                    "/health",
                    None,
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!("the server did not answer GET /health within {timeout:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// PID of the server process.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's log file (inside the base directory).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the server (SIGTERM, then SIGKILL after 15 s), kills any process
    /// still mentioning the base directory, and removes the directory.
    /// Returns a description of every leftover process it had to kill.
    pub async fn stop(&mut self) -> Vec<String> {
        if let Some(pid) = self.child.id() {
            send_signal(pid, libc::SIGTERM);
            let waited = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
            if waited.is_err() {
                tracing::warn!(pid, "server ignored SIGTERM for 15 s; killing it");
                let _ = self.child.kill().await;
            }
        }
        let leftovers = kill_processes_mentioning(&self.base);
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            tracing::warn!(dir = %self.base.display(), error = %e, "cannot remove the bench base directory");
        }
        leftovers
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// PIDs and command lines of processes (other than this one) whose command
/// line contains `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(&needle) {
            found.push((pid, cmd.trim().to_owned()));
        }
    }
    found
}

/// Kills (SIGKILL) every process mentioning `dir` and describes each.
pub fn kill_processes_mentioning(dir: &Path) -> Vec<String> {
    let found = processes_mentioning(dir);
    for (pid, cmd) in &found {
        tracing::warn!(pid, cmd = %cmd, "leftover process; killing it");
        send_signal(*pid, libc::SIGKILL);
    }
    found
        .into_iter()
        .map(|(pid, cmd)| format!("pid {pid}: {cmd}"))
        .collect()
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
