//! Process helpers private to the Firecracker driver: start time (to tell a
//! VMM from a later process that reused its PID), liveness, signals and exit
//! watching for both our own children and adopted processes.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::watch;

/// How often an adopted (non-child) process is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(20);

/// Fields of `/proc/<pid>/stat` this driver needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: one-letter state (`Z` = zombie, `X` = dead).
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// True while the process still executes (not a zombie).
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// True when `pid` runs and is the process that started at `start_time`.
pub(crate) fn is_same_running(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.is_running() && s.start_time == start_time)
}

/// Sends SIGKILL to the process group led by `pid` (the driver starts every
/// VMM as a group leader) and to `pid` itself. Errors (already gone) are
/// ignored: killing is idempotent.
pub(crate) fn kill_group(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = Pid::from_raw(raw);
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// Describes how a process ended, e.g. "exit status 1", "killed by signal 9".
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig}")
    } else {
        status.to_string()
    }
}

/// Receives the exit reason of a VMM process once it is known.
pub(crate) type ExitWatch = watch::Receiver<Option<String>>;

/// Reaps `child` in a background task and publishes its exit reason.
pub(crate) fn watch_child(mut child: Child) -> ExitWatch {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let reason = match child.wait().await {
            Ok(status) => describe_exit(status),
            Err(err) => format!("wait failed: {err}"),
        };
        let _ = tx.send(Some(reason));
    });
    rx
}

/// Watches a process this server did not spawn (adopted after a restart): it
/// cannot be waited for, so `/proc` is polled until it is gone, a zombie, or
/// its PID belongs to another process.
pub(crate) fn watch_adopted(pid: u32, start_time: u64) -> ExitWatch {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            if !is_same_running(pid, start_time) {
                let _ = tx.send(Some("exited (adopted process, status unknown)".into()));
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(ADOPTED_POLL).await;
        }
    });
    rx
}

/// The exit reason if the process has already exited.
pub(crate) fn exited(watch: &ExitWatch) -> Option<String> {
    watch.borrow().clone()
}

/// Waits up to `timeout` for the exit reason; `None` if still running.
pub(crate) async fn wait_exit(watch: &ExitWatch, timeout: Duration) -> Option<String> {
    let mut rx = watch.clone();
    let fut = async {
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            // The watcher task is gone without a result (runtime shutting down).
            Err(_) => Some("exit status unknown".to_owned()),
        };
        reason
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let text = "1234 (fire (cr) acker) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(text).expect("parse");
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 98765);
        assert!(s.is_running());
        assert!(parse_stat("1 (x) Z 1 2").is_none());
    }

    #[test]
    fn own_process_has_a_start_time() {
        let pid = std::process::id();
        let s = stat(pid).expect("own stat");
        assert!(is_same_running(pid, s.start_time));
        assert!(!is_same_running(pid, s.start_time + 1));
    }
}
