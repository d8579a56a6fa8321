//! Helpers shared by the test suites of every crate: finding the installed
//! guest image, skipping a test that cannot run here *visibly*, and killing
//! what a failed test left running.
//!
//! # Skips
//! A test that cannot run (no guest image, no Firecracker binary) calls
//! [`skip`]: it prints `SKIPPED: <reason>` and, when `LOCALE2B_SKIP_LOG`
//! names a file, appends one line to it, so that `make test` counts the
//! test as skipped rather than passed (the test harness itself only knows
//! pass and fail). With `LOCALE2B_REQUIRE_E2E=1` a missing guest image is a
//! failure instead ([`require_or_skip`]).

#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reports the running test as skipped (see the module docs).
pub fn skip(reason: impl Display) {
    println!("SKIPPED: {reason}");
    let Some(log) = std::env::var_os("LOCALE2B_SKIP_LOG") else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // One short write per line: appends from parallel tests do not interleave.
    let line = format!("{test}\t{reason}\n");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Whether end-to-end tests must run (`LOCALE2B_REQUIRE_E2E=1`).
pub fn e2e_required() -> bool {
    std::env::var("LOCALE2B_REQUIRE_E2E").as_deref() == Ok("1")
}

/// Skips the test, or fails it when end-to-end tests are required.
///
/// # Panics
/// When `LOCALE2B_REQUIRE_E2E=1`.
pub fn require_or_skip(reason: impl Display) {
    assert!(
        !e2e_required(),
        "end-to-end tests are required (LOCALE2B_REQUIRE_E2E=1) but {reason}"
    );
    skip(reason);
}

/// Where the installed guest image is expected: `LOCALE2B_TEST_IMAGE_DIR`,
/// else `$LOCALE2B_BASE_DIR/images/default`, else
/// `/var/lib/firecracker-workspaces/images/default`.
pub fn image_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCALE2B_TEST_IMAGE_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("LOCALE2B_BASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/firecracker-workspaces"))
        .join("images/default")
}

/// The installed guest image (kernel and rootfs), or `None` after
/// [`require_or_skip`].
pub fn image_dir() -> Option<PathBuf> {
    let dir = image_path();
    if dir.join("vmlinux").is_file() && dir.join("rootfs.ext4").is_file() {
        return Some(dir);
    }
    require_or_skip(format!(
        "no guest image in {} (run `locale2b image build`)",
        dir.display()
    ));
    None
}

/// The initramfs of an installed image, when it has one (a Debian kernel;
/// installing a compiled-kernel image removes it).
pub fn initrd_of(image_dir: &Path) -> Option<PathBuf> {
    let p = image_dir.join("initrd");
    p.is_file().then_some(p)
}

/// The installed guest kernel's directory, or `None` after
/// [`require_or_skip`].
pub fn kernel_dir() -> Option<PathBuf> {
    let dir = image_path();
    if dir.join("vmlinux").is_file() {
        return Some(dir);
    }
    require_or_skip(format!("no guest kernel in {}", dir.display()));
    None
}

/// PIDs of processes other than this one whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGKILLs every process whose command line mentions `dir` (VMs and
/// servers a failed test left behind).
pub fn kill_mentioning(dir: &Path) {
    for pid in pids_mentioning(&dir.to_string_lossy()) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
