//! The host around the VMs: signalling VMM processes, finding the ones a
//! crash left behind, and how much memory the host has.

use locale2b_vmm::VmProcess;
use std::path::Path;

/// SIGKILLs the VMM process of a record if it is still that process (pid
/// and start time match, so a recycled pid is never hit).
pub fn kill_process(p: &VmProcess) {
    if locale2b_vmm::process::is_alive(p.pid, p.start_time) {
        kill_pid(p.pid);
    }
}

/// SIGKILLs `pid`.
pub fn kill_pid(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// PIDs of VMM processes (qemu, firecracker, jailer) whose command line
/// mentions `dir` (our sandboxes directory): candidates for the orphan scan.
pub fn vmm_processes_under(dir: &Path) -> Vec<u32> {
    let marker = dir.to_string_lossy();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let exe = cmdline.split('\0').next().unwrap_or_default();
        let is_vmm =
            exe.contains("qemu-system") || exe.contains("firecracker") || exe.contains("jailer");
        if is_vmm && cmdline.contains(marker.as_ref()) {
            out.push(pid);
        }
    }
    out
}

/// Total host RAM in MiB (`/proc/meminfo`), 4096 when unreadable.
pub fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_is_plausible() {
        let mb = host_memory_mb();
        assert!(mb >= 256, "{mb} MiB");
    }

    #[test]
    fn no_vmm_runs_from_a_fresh_directory() {
        let dir = std::env::temp_dir().join("l2b-host-test-none");
        assert!(vmm_processes_under(&dir).is_empty());
    }
}
