//! VMM process helpers shared by the backends.
//!
//! A VMM process is identified by its PID *and* its start time
//! (`/proc/<pid>/stat` field 22), so a PID reused by an unrelated process is
//! never mistaken for the VMM. Processes are spawned in their own process
//! group, so a Ctrl-C aimed at the server does not reach them, and they keep
//! running when the server dies (a restarted server re-attaches with
//! [`VmmProcess::adopt`]).
//!
//! Every [`VmmProcess`] has one background task that waits for the exit (a
//! child is reaped with `wait`; an adopted process is polled) and publishes
//! the exit reason, so any number of callers can wait without holding a lock.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
use tokio::sync::watch;

/// How often [`VmmProcess::adopt`] checks an adopted process for liveness.
const ADOPTED_POLL: Duration = Duration::from_millis(50);

/// Reads the start time of `pid` (`/proc/<pid>/stat` field 22, clock ticks
/// since boot).
///
/// # Errors
/// The process does not exist or its stat line cannot be parsed.
pub fn proc_start_time(pid: u32) -> io::Result<u64> {
    let stat = read_stat(pid)?;
    stat.start_time
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat line"))
}

struct Stat {
    state: char,
    start_time: Option<u64>,
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat line"))
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after the *last* `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19).and_then(|s| s.parse().ok());
    Some(Stat { state, start_time })
}

/// Why a pid does not name the live process that started at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAlive {
    /// No such process (or its stat line is unreadable).
    Gone,
    /// The pid now belongs to another process, which started at `start_time`.
    Reused {
        /// Start time of the process that holds the pid now.
        start_time: u64,
    },
    /// The process has exited but is not reaped yet (zombie or dead).
    Exited,
}

/// Checks that `pid` exists, started at `start_time` (so the pid was not
/// reused) and is not a zombie; says which of these fails otherwise.
///
/// # Errors
/// The reason the process is not the live one that started at `start_time`.
pub fn check_alive(pid: u32, start_time: u64) -> Result<(), NotAlive> {
    let Ok(stat) = read_stat(pid) else {
        return Err(NotAlive::Gone);
    };
    match stat.start_time {
        None => Err(NotAlive::Gone),
        Some(t) if t != start_time => Err(NotAlive::Reused { start_time: t }),
        // `x` is the "dead" state of older kernels.
        Some(_) if matches!(stat.state, 'Z' | 'X' | 'x') => Err(NotAlive::Exited),
        Some(_) => Ok(()),
    }
}

/// True when `pid` exists, is not a zombie, and started at `start_time`.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    check_alive(pid, start_time).is_ok()
}

/// Describes an exit status in words: "exit status 1", "killed by signal 9".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig}")
    } else {
        status.to_string()
    }
}

/// Returns the last `max_lines` lines of a (log) file, or an empty string.
pub fn tail_file(path: &Path, max_lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// A running VMM process: spawned by us or adopted after a server restart.
#[derive(Debug, Clone)]
pub struct VmmProcess {
    pid: u32,
    start_time: u64,
    exit: watch::Receiver<Option<String>>,
}

impl VmmProcess {
    /// Spawns `cmd` in a new process group with stdin closed. The caller
    /// sets stdout/stderr. The child is not killed when the handle drops.
    ///
    /// # Errors
    /// Spawning failed, or the child vanished before its start time could be
    /// read.
    pub fn spawn(mut cmd: tokio::process::Command) -> io::Result<Self> {
        cmd.process_group(0)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
        // The child is not reaped until `child.wait()` below runs, so the pid
        // cannot be reused before we read its start time.
        let start_time = proc_start_time(pid)?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = tx.send(Some(reason));
        });
        Ok(Self {
            pid,
            start_time,
            exit: rx,
        })
    }

    /// Adopts a process that is not our child (it outlived a previous server).
    /// Its exit status cannot be read; its end is detected by polling.
    ///
    /// # Errors
    /// [`io::ErrorKind::NotFound`] when the process is gone or the pid now
    /// belongs to a process with another start time.
    pub fn adopt(pid: u32, start_time: u64) -> io::Result<Self> {
        Self::adopt_polling(pid, start_time, ADOPTED_POLL)
    }

    /// As [`VmmProcess::adopt`], checking for the exit every `poll`.
    ///
    /// # Errors
    /// As [`VmmProcess::adopt`].
    pub fn adopt_polling(pid: u32, start_time: u64, poll: Duration) -> io::Result<Self> {
        if !is_alive(pid, start_time) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("process {pid} (start time {start_time}) is not running"),
            ));
        }
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                if !is_alive(pid, start_time) {
                    let _ = tx.send(Some("exited (adopted process, status unknown)".into()));
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        });
        Ok(Self {
            pid,
            start_time,
            exit: rx,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Start time (clock ticks since boot).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The exit reason once the process has exited, else `None`.
    pub fn exit_reason(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit and returns its reason.
    pub async fn wait(&self) -> String {
        let mut rx = self.exit.clone();
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_default(),
            // The waiter task ended without a value: only on runtime shutdown.
            Err(_) => "exit reason unknown (waiter stopped)".into(),
        };
        result
    }

    /// Waits at most `timeout` for the exit.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// Sends `signal` unless the process has already exited (and the pid
    /// still names it).
    ///
    /// # Errors
    /// `kill(2)` failed for a reason other than "no such process".
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        if self.exit_reason().is_some() || !is_alive(self.pid, self.start_time) {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        match nix::sys::signal::kill(pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Sends `signal` to the process group led by the process (every
    /// [`VmmProcess::spawn`]ed process leads its own group) and to the
    /// process itself, unless it has already exited (and the pid still
    /// names it). "No such process" is not an error.
    ///
    /// # Errors
    /// `killpg(2)` or `kill(2)` failed for another reason (both are tried).
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        if self.exit_reason().is_some() || !is_alive(self.pid, self.start_time) {
            return Ok(());
        }
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let ignore_gone = |r: nix::Result<()>| match r {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        };
        let group = ignore_gone(nix::sys::signal::killpg(pid, signal));
        let single = ignore_gone(nix::sys::signal::kill(pid, signal));
        group.and(single)
    }

    /// SIGKILLs the process and waits (up to `timeout`) until it is gone.
    /// Returns the exit reason, or `None` if it did not go away in time.
    ///
    /// # Errors
    /// As [`VmmProcess::signal`].
    pub async fn kill(&self, timeout: Duration) -> io::Result<Option<String>> {
        self.signal(nix::sys::signal::Signal::SIGKILL)?;
        Ok(self.wait_timeout(timeout).await)
    }
}

/// Proportional set size of a process, KiB: all of it, and the part that
/// maps `file` (e.g. a template's memory file, shared between its clones:
/// each page counts 1/n for n sharers).
///
/// # Errors
/// When `/proc/<pid>/smaps` cannot be read (the process is gone).
pub fn pss_kib(pid: u32, file: &Path) -> io::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let file = file.to_string_lossy();
    let (mut total, mut of_file, mut in_file) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kib;
            if in_file {
                of_file += kib;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            // A mapping's header: "start-end perms offset dev inode path".
            in_file = line.ends_with(file.as_ref());
        }
    }
    Ok((total, of_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let stat = parse_stat(line).expect("parse");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, Some(987654));
    }

    #[test]
    fn own_process_is_alive_and_start_time_mismatch_is_not() {
        let me = std::process::id();
        let st = proc_start_time(me).expect("own stat");
        assert!(is_alive(me, st));
        assert!(!is_alive(me, st + 1));
        assert!(!is_alive(u32::MAX - 1, st));
    }

    #[tokio::test]
    async fn spawn_wait_and_kill() {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let p = VmmProcess::spawn(cmd).expect("spawn");
        let reason = p.wait_timeout(Duration::from_secs(5)).await;
        assert_eq!(reason.as_deref(), Some("exit status 3"));

        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30");
        let p = VmmProcess::spawn(cmd).expect("spawn");
        assert!(is_alive(p.pid(), p.start_time()));
        let adopted = VmmProcess::adopt(p.pid(), p.start_time()).expect("adopt");
        let reason = p.kill(Duration::from_secs(5)).await.expect("kill");
        assert_eq!(reason.as_deref(), Some("killed by signal 9"));
        let reason = adopted.wait_timeout(Duration::from_secs(5)).await;
        assert!(reason.expect("adopted exit seen").contains("exited"));
        // Idempotent.
        assert!(p
            .kill(Duration::from_secs(1))
            .await
            .expect("kill")
            .is_some());
        assert!(VmmProcess::adopt(p.pid(), p.start_time()).is_err());
    }

    #[test]
    fn check_alive_names_the_reason() {
        let me = std::process::id();
        let st = proc_start_time(me).expect("own stat");
        assert_eq!(check_alive(me, st), Ok(()));
        assert_eq!(
            check_alive(me, st + 1),
            Err(NotAlive::Reused { start_time: st })
        );
        assert_eq!(check_alive(u32::MAX - 1, st), Err(NotAlive::Gone));

        // An exited, unreaped child is a zombie.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let st = proc_start_time(pid).expect("child stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while check_alive(pid, st).is_ok() {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::yield_now();
        }
        assert_eq!(check_alive(pid, st), Err(NotAlive::Exited));
        child.wait().expect("reap");
    }

    /// Polls until `pid` (started at `start_time`) is gone or a zombie.
    async fn wait_gone(pid: u32, start_time: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid, start_time) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    #[tokio::test]
    async fn signal_group_reaches_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("member.pid");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"sleep 30 & echo $! > "$1"; wait"#)
            .arg("sh")
            .arg(&pid_file);
        let leader = VmmProcess::spawn(cmd).expect("spawn");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let member: u32 = loop {
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if text.ends_with('\n') {
                break text.trim().parse().expect("member pid");
            }
            assert!(tokio::time::Instant::now() < deadline, "no member pid");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let member_start = proc_start_time(member).expect("member stat");

        leader
            .signal_group(nix::sys::signal::Signal::SIGKILL)
            .expect("signal group");
        let reason = leader.wait_timeout(Duration::from_secs(5)).await;
        assert_eq!(reason.as_deref(), Some("killed by signal 9"));
        assert!(
            wait_gone(member, member_start).await,
            "group member survived"
        );
        // Idempotent once the leader has exited.
        leader
            .signal_group(nix::sys::signal::Signal::SIGKILL)
            .expect("signal exited group");
    }
}
