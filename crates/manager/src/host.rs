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

/// CPU time (user + system, clock ticks) and resident memory (KiB) of
/// process `pid`, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((ticks, rss_kb))
}

/// Proportional set size of process `pid`, KiB (`/proc/<pid>/smaps_rollup`):
/// its resident memory with every page shared by n processes counted 1/n,
/// so summing it over processes counts shared pages once.
pub fn process_pss_kb(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Space available to unprivileged users on the filesystem holding
/// `path`, MiB.
pub fn free_space_mb(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() * st.fragment_size() / (1024 * 1024))
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
    fn own_usage_is_readable() {
        let (ticks, rss_kb) = process_usage(std::process::id()).expect("own /proc entries");
        assert!(rss_kb > 0, "rss {rss_kb} KiB");
        let again = process_usage(std::process::id())
            .expect("own /proc entries")
            .0;
        assert!(again >= ticks);
        assert!(free_space_mb(Path::new("/")).is_some());
    }

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
