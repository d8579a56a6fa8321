//! Harness for end-to-end tests of the manager with real guests (qemu
//! backend): a fresh short base directory that shares the installed guest
//! image, and a manager over it.
#![allow(dead_code, clippy::unwrap_used, clippy::field_reassign_with_default)]

use locale2b_config::{Config, VmmChoice};
use locale2b_manager::{backend, SandboxManager};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use locale2b_testkit::{image_dir, kill_mentioning, pids_mentioning};

/// A temporary base directory (short path: sockets live under it).
pub struct TestBase {
    pub dir: tempfile::TempDir,
}

impl TestBase {
    pub fn new(image: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("l2b")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::os::unix::fs::symlink(image, dir.path().join("images/default")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.vmm.vmm = VmmChoice::Qemu;
        let m = &mut c.manager;
        m.base_dir = self.path().to_path_buf();
        m.boot_timeout_sec = 120;
        m.memory_budget_mb = 16 * 1024;
        m.max_sandboxes = 12;
        m.default_memory_mb = 256;
        m.min_memory_mb = 128;
        m.disk_size_mb = 1024;
        m.shutdown_grace_sec = 3;
        m.health_check_interval_sec = 1;
        c
    }
}

impl Drop for TestBase {
    /// A failed test must not leave VMs running (they would slow every later
    /// test): kill whatever still runs from this base directory.
    fn drop(&mut self) {
        kill_mentioning(self.path());
    }
}

pub async fn manager(config: Config) -> Arc<SandboxManager> {
    let (vmm, report) = backend::build(&config.vmm, &config.manager)
        .await
        .expect("backend");
    SandboxManager::open(Arc::new(config.manager), vmm, backend::accel_name(&report))
        .await
        .expect("open manager")
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    text.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(d.as_ref()))
        })
        .count()
}

/// All files (recursively) under `dir`, excluding the `images` link.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.file_name().and_then(|n| n.to_str()) == Some("images") {
                    continue;
                }
                out.push(path.clone());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&path, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
