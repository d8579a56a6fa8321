//! The process table: processes the host starts and then reaches by pid or
//! tag, whether it stays connected or not (protocol 2).
//!
//! Each process runs in its own session and process group (signals go to
//! the group), with a stdin pipe or `/dev/null`, or on a pseudo-terminal.
//! Its output goes into an [`OutputBuffer`] (see `buffer.rs` for the
//! cursor and drop rules); [`stream::stream_output`] sends it to a reader.
//! An exited process stays in the table for the retention time so a late
//! reader still gets its exit and the tail of its output. The table lives
//! in the agent, so processes survive host reconnects and pause/resume.

pub mod buffer;
pub mod pty;
pub mod stream;

use crate::children::ChildRegistry;
use crate::command::{build_env, lookup_user, pre_exec_setup, signal_group, working_dir};
use base64::Engine as _;
use buffer::OutputBuffer;
use locale2b_protocol::{
    DataChannel, ErrorBody, ErrorCode, ProcessExit, ProcessInfo, ProcessSelector,
    ProcessStartRequest, ProcessState, PtySize, DEFAULT_OUTPUT_BUFFER, MAX_OUTPUT_BUFFER,
    MIN_OUTPUT_BUFFER,
};
use pty::PtyMaster;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default time an exited process is kept: 10 minutes.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);

/// Most processes running at once.
pub const MAX_RUNNING: usize = 1024;

/// Most exited processes kept (the oldest go first beyond it).
pub const MAX_EXITED: usize = 256;

/// After a process exited, its pipes are read until they are quiet this
/// long (background children may keep them open)...
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// ...and at most this long in all.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(10);

/// How long a write to stdin may wait for the process to read.
const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of each read from a process's output.
const READ_CHUNK: usize = 256 * 1024;

/// Capacity asked for the output pipes (Linux defaults to 64 KiB): fewer,
/// larger reads cost less per byte, which matters under emulation.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Grows a pipe's capacity (best effort: the default stays on failure).
fn grow_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own takes an integer.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

/// Where a process's input goes.
#[derive(Debug)]
enum Input {
    Pipe(tokio::process::ChildStdin),
    Pty(Arc<PtyMaster>),
}

/// One process of the table.
#[derive(Debug)]
pub struct Proc {
    /// Guest pid (also its process group id).
    pub pid: u32,
    tag: Option<String>,
    command: Option<String>,
    argv: Vec<String>,
    cwd: String,
    env: BTreeMap<String, String>,
    pty_size: Mutex<Option<PtySize>>,
    started_at_ms: u64,
    started: Instant,
    /// Its output.
    pub buffer: OutputBuffer,
    input: tokio::sync::Mutex<Option<Input>>,
    stdin_open: AtomicBool,
    pty: Option<Arc<PtyMaster>>,
    exit: Mutex<Option<(ProcessExit, Instant)>>,
    /// Set as soon as the process was reaped (its exit is published once
    /// its output is all in).
    reaped: AtomicBool,
    /// Cancelled when it was reaped (ends its timeout task).
    ended: tokio_util::sync::CancellationToken,
    timed_out: AtomicBool,
    /// Forget it once a follow stream delivered its end.
    pub ephemeral: bool,
}

impl Proc {
    /// How it ended, once it has.
    pub fn exit(&self) -> Option<ProcessExit> {
        lock(&self.exit).as_ref().map(|(e, _)| e.clone())
    }

    fn running(&self) -> bool {
        !self.reaped.load(Ordering::SeqCst)
    }

    /// The table's view of it.
    pub fn info(&self) -> ProcessInfo {
        let (start, end, cap, _) = self.buffer.bounds();
        ProcessInfo {
            pid: self.pid,
            tag: self.tag.clone(),
            command: self.command.clone(),
            argv: self.argv.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            pty: *lock(&self.pty_size),
            stdin_open: self.stdin_open.load(Ordering::SeqCst) && self.running(),
            state: match self.exit() {
                None => ProcessState::Running,
                Some(e) => ProcessState::Exited(e),
            },
            output_start: start,
            output_end: end,
            buffer_bytes: cap,
            started_at_ms: self.started_at_ms,
        }
    }

    fn exited_error(&self) -> Option<ErrorBody> {
        if self.running() {
            return None;
        }
        let Some(e) = self.exit() else {
            return Some(err(
                ErrorCode::InvalidState,
                format!("process {} has exited", self.pid),
            ));
        };
        Some(e).map(|e| {
            let how = match (e.exit_code, e.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                (None, None) => "unknown status".into(),
            };
            err(
                ErrorCode::InvalidState,
                format!("process {} has exited ({how})", self.pid),
            )
        })
    }

    /// Sends `signal` to its process group.
    ///
    /// # Errors
    /// `invalid_request` for a signal outside 1–64, `invalid_state` when it
    /// has exited.
    pub fn signal(&self, signal: i32) -> Result<(), ErrorBody> {
        if !(1..=64).contains(&signal) {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("signal {signal} is out of range 1-64"),
            ));
        }
        if let Some(e) = self.exited_error() {
            return Err(e);
        }
        signal_group(self.pid as i32, signal).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                err(
                    ErrorCode::InvalidState,
                    format!("process {} has exited", self.pid),
                )
            } else {
                ErrorBody::io(&format!("signal to process {}", self.pid), &e)
            }
        })
    }

    /// Resizes its PTY.
    ///
    /// # Errors
    /// `invalid_request` (no PTY, bad size), `invalid_state` (exited).
    pub fn resize(&self, size: PtySize) -> Result<(), ErrorBody> {
        size.validate()
            .map_err(|m| err(ErrorCode::InvalidRequest, m))?;
        let Some(master) = &self.pty else {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("process {} has no pty to resize", self.pid),
            ));
        };
        if let Some(e) = self.exited_error() {
            return Err(e);
        }
        master
            .resize(size)
            .map_err(|e| ErrorBody::io(&format!("resize of process {}", self.pid), &e))?;
        *lock(&self.pty_size) = Some(size);
        Ok(())
    }

    /// Writes `data` to its stdin (or PTY) and closes stdin when `close`.
    ///
    /// # Errors
    /// `invalid_state` (exited, stdin closed), `invalid_request` (close on a
    /// PTY), `timeout` when the process does not read its stdin.
    pub async fn input(&self, data: &[u8], close: bool) -> Result<(), ErrorBody> {
        if let Some(e) = self.exited_error() {
            return Err(e);
        }
        let mut input = self.input.lock().await;
        let what = format!("stdin of process {}", self.pid);
        match input.as_mut() {
            None => Err(err(
                ErrorCode::InvalidState,
                if self.stdin_open.load(Ordering::SeqCst) {
                    format!("{what} is closed")
                } else {
                    format!("{what} is closed (start the process with stdin to write to it)")
                },
            )),
            Some(Input::Pty(_)) if close => Err(err(
                ErrorCode::InvalidRequest,
                "a pty's input cannot be closed; send Ctrl-D (0x04) to end input",
            )),
            Some(Input::Pty(master)) => {
                tokio::time::timeout(STDIN_WRITE_TIMEOUT, master.write_all(data))
                    .await
                    .map_err(|_| {
                        err(
                            ErrorCode::Timeout,
                            format!("{what} is full: the process is not reading it"),
                        )
                    })?
                    .map_err(|e| ErrorBody::io(&what, &e))
            }
            Some(Input::Pipe(pipe)) => {
                let write = async {
                    pipe.write_all(data).await?;
                    pipe.flush().await
                };
                let written = tokio::time::timeout(STDIN_WRITE_TIMEOUT, write)
                    .await
                    .map_err(|_| {
                        err(
                            ErrorCode::Timeout,
                            format!("{what} is full: the process is not reading it"),
                        )
                    })?;
                if let Err(e) = written {
                    *input = None;
                    self.stdin_open.store(false, Ordering::SeqCst);
                    return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                        err(
                            ErrorCode::InvalidState,
                            format!("{what} is closed: the process closed it"),
                        )
                    } else {
                        ErrorBody::io(&what, &e)
                    });
                }
                if close {
                    *input = None;
                    self.stdin_open.store(false, Ordering::SeqCst);
                }
                Ok(())
            }
        }
    }
}

/// What a start needs from the agent around it.
#[derive(Debug, Clone)]
pub struct SpawnContext {
    /// Where children are registered so the init reaper leaves them alone.
    pub children: Arc<ChildRegistry>,
    /// Default working directory (and base of relative ones).
    pub workspace_dir: PathBuf,
    /// The sandbox's environment defaults (from `init`).
    pub sandbox_env: BTreeMap<String, String>,
}

/// Every process the agent started for the host.
#[derive(Debug)]
pub struct ProcessTable {
    procs: Mutex<BTreeMap<u32, Arc<Proc>>>,
    retention: Mutex<Duration>,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self {
            procs: Mutex::new(BTreeMap::new()),
            retention: Mutex::new(DEFAULT_RETENTION),
        }
    }
}

impl ProcessTable {
    /// Sets how long exited processes are kept.
    pub fn set_retention(&self, retention: Duration) {
        *lock(&self.retention) = retention;
    }

    /// Drops exited processes past the retention time, and the oldest
    /// beyond [`MAX_EXITED`].
    fn prune(&self, procs: &mut BTreeMap<u32, Arc<Proc>>) {
        let retention = *lock(&self.retention);
        let now = Instant::now();
        let mut exited: Vec<(Instant, u32)> = Vec::new();
        procs.retain(|pid, p| match lock(&p.exit).as_ref() {
            Some((_, at)) if now.duration_since(*at) >= retention && p.buffer.is_closed() => false,
            Some((_, at)) => {
                exited.push((*at, *pid));
                true
            }
            None => true,
        });
        if exited.len() > MAX_EXITED {
            exited.sort();
            for (_, pid) in &exited[..exited.len() - MAX_EXITED] {
                procs.remove(pid);
            }
        }
    }

    /// The process `sel` names: by pid, or by tag (a running one first,
    /// else the one that exited last).
    ///
    /// # Errors
    /// `not_found`.
    pub fn get(&self, sel: &ProcessSelector) -> Result<Arc<Proc>, ErrorBody> {
        let mut procs = lock(&self.procs);
        self.prune(&mut procs);
        let found = match sel {
            ProcessSelector::Pid(pid) => procs.get(pid).cloned(),
            ProcessSelector::Tag(tag) => {
                let mut tagged: Vec<&Arc<Proc>> = procs
                    .values()
                    .filter(|p| p.tag.as_deref() == Some(tag))
                    .collect();
                tagged.sort_by_key(|p| (p.running(), p.started));
                tagged.last().map(|p| (*p).clone())
            }
        };
        found.ok_or_else(|| err(ErrorCode::NotFound, format!("{sel} not found")))
    }

    /// Every process, by pid.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut procs = lock(&self.procs);
        self.prune(&mut procs);
        procs.values().map(|p| p.info()).collect()
    }

    /// Kills `sel`'s group if it runs, and forgets it.
    ///
    /// # Errors
    /// `not_found`.
    pub fn remove(&self, sel: &ProcessSelector) -> Result<(), ErrorBody> {
        let p = self.get(sel)?;
        if p.running() {
            let _ = signal_group(p.pid as i32, libc::SIGKILL);
        }
        lock(&self.procs).remove(&p.pid);
        Ok(())
    }

    /// Forgets `pid` (an ephemeral process whose end was delivered).
    pub fn forget(&self, pid: u32) {
        lock(&self.procs).remove(&pid);
    }

    /// Starts a process.
    ///
    /// # Errors
    /// `invalid_request` (bad command, tag, size, env name, missing
    /// directory or user), `too_large` (too many processes), `io` when it
    /// cannot be spawned.
    pub async fn start(
        &self,
        ctx: &SpawnContext,
        req: &ProcessStartRequest,
    ) -> Result<Arc<Proc>, ErrorBody> {
        let invalid = |m: String| err(ErrorCode::InvalidRequest, m);
        let (program, args): (String, Vec<String>) = match (&req.command, req.argv.as_slice()) {
            (Some(c), []) if !c.trim().is_empty() => {
                ("/bin/sh".into(), vec!["-c".into(), c.clone()])
            }
            (None, [first, rest @ ..]) if !first.is_empty() => (first.clone(), rest.to_vec()),
            (Some(_), [_, ..]) => {
                return Err(invalid("give either command or argv, not both".into()))
            }
            _ => {
                return Err(invalid(
                    "give a non-empty command (run with /bin/sh -c) or argv".into(),
                ))
            }
        };
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("the command contains a NUL byte".into()));
        }
        for (k, v) in &req.env {
            if k.is_empty()
                || k.as_bytes()[0].is_ascii_digit()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid(format!(
                    "environment variable name {k:?} is invalid: use letters, digits and '_', not starting with a digit"
                )));
            }
            if v.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {k} contains a NUL byte"
                )));
            }
        }
        if let Some(tag) = &req.tag {
            locale2b_protocol::validate_tag(tag).map_err(invalid)?;
        }
        if let Some(size) = &req.pty {
            size.validate().map_err(invalid)?;
        }
        let buffer_bytes = req.buffer_bytes.unwrap_or(DEFAULT_OUTPUT_BUFFER);
        if !(MIN_OUTPUT_BUFFER..=MAX_OUTPUT_BUFFER).contains(&buffer_bytes) {
            return Err(invalid(format!(
                "buffer_bytes must be between {MIN_OUTPUT_BUFFER} and {MAX_OUTPUT_BUFFER} (got {buffer_bytes})"
            )));
        }
        let input = match &req.input_b64 {
            Some(b) if req.pty.is_none() && req.stdin => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| invalid(format!("input_b64 is not valid base64: {e}")))?,
            ),
            Some(_) => return Err(invalid("input_b64 needs stdin and no pty".into())),
            None => None,
        };
        if req.timeout_ms == Some(0) {
            return Err(invalid("timeout_ms must be positive".into()));
        }
        let user = req
            .user
            .as_deref()
            .map(lookup_user)
            .transpose()
            .map_err(|e| err(ErrorCode::InvalidRequest, e.message))?;
        let cwd = working_dir(&ctx.workspace_dir, req.cwd.as_deref())?;
        if !cwd.is_dir() {
            return Err(invalid(format!(
                "working directory {} does not exist",
                cwd.display()
            )));
        }
        {
            let mut procs = lock(&self.procs);
            self.prune(&mut procs);
            let running: Vec<&Arc<Proc>> = procs.values().filter(|p| p.running()).collect();
            if running.len() >= MAX_RUNNING {
                return Err(err(
                    ErrorCode::TooLarge,
                    format!("too many processes: {MAX_RUNNING} are running"),
                ));
            }
            if let Some(tag) = &req.tag {
                if running.iter().any(|p| p.tag.as_ref() == Some(tag)) {
                    return Err(err(
                        ErrorCode::AlreadyExists,
                        format!("a running process is already tagged {tag:?}"),
                    ));
                }
            }
        }

        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .env_clear()
            .envs(build_env(&ctx.sandbox_env, &req.env, user.as_ref()))
            .current_dir(&cwd)
            .kill_on_drop(false);
        let master = match req.pty {
            Some(size) => {
                let (master, slave) =
                    pty::open(size).map_err(|e| ErrorBody::io("cannot open a pty", &e))?;
                let clone = |fd: &std::os::fd::OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| ErrorBody::io("cannot duplicate the pty", &e))
                };
                cmd.stdin(Stdio::from(clone(&slave)?))
                    .stdout(Stdio::from(clone(&slave)?))
                    .stderr(Stdio::from(slave));
                if !req.env.contains_key("TERM") {
                    cmd.env("TERM", "xterm-256color");
                }
                Some(Arc::new(master))
            }
            None => {
                cmd.stdin(if req.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
                None
            }
        };
        pre_exec_setup(&mut cmd, user.as_ref(), master.is_some());
        let mut child = ctx.children.spawn(&mut cmd).map_err(|e| {
            err(
                if e.kind() == std::io::ErrorKind::NotFound {
                    ErrorCode::InvalidRequest
                } else {
                    ErrorCode::from_io_kind(e.kind())
                },
                format!("cannot start {program}: {e}"),
            )
        })?;
        // The parent's copies of the pty slave must close now, or the
        // terminal never reports its end.
        drop(cmd);
        let pid = child.id().unwrap_or(0);
        let started_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let stdin = match &master {
            Some(m) => Some(Input::Pty(m.clone())),
            None => child.stdin.take().map(Input::Pipe),
        };
        let proc = Arc::new(Proc {
            pid,
            tag: req.tag.clone(),
            command: req.command.clone(),
            argv: req.argv.clone(),
            cwd: cwd.display().to_string(),
            env: req.env.clone(),
            pty_size: Mutex::new(req.pty),
            started_at_ms,
            started: Instant::now(),
            buffer: OutputBuffer::new(buffer_bytes),
            stdin_open: AtomicBool::new(stdin.is_some()),
            input: tokio::sync::Mutex::new(stdin),
            pty: master.clone(),
            exit: Mutex::new(None),
            reaped: AtomicBool::new(false),
            ended: tokio_util::sync::CancellationToken::new(),
            timed_out: AtomicBool::new(false),
            ephemeral: req.ephemeral,
        });
        lock(&self.procs).insert(pid, proc.clone());

        // Output pumps: read into one growing buffer and hand the filled
        // part to the output buffer without copying it.
        let mut pumps = Vec::new();
        if let Some(m) = master {
            let p = proc.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                loop {
                    buf.resize(READ_CHUNK, 0);
                    match m.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = buf.split_to(n).freeze();
                            p.buffer.append(DataChannel::Pty, chunk).await;
                        }
                    }
                }
            }));
        }
        if let Some(p) = &child.stdout {
            grow_pipe(p);
        }
        if let Some(p) = &child.stderr {
            grow_pipe(p);
        }
        for (pipe, channel) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                DataChannel::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
                DataChannel::Stderr,
            ),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let p = proc.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
                loop {
                    buf.reserve(READ_CHUNK);
                    match pipe.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = buf.split_to(n).freeze();
                            p.buffer.append(channel, chunk).await;
                        }
                    }
                }
            }));
        }

        // Timeout.
        let timeout = req.timeout_ms.map(Duration::from_millis);
        if let Some(t) = timeout {
            let p = proc.clone();
            tokio::spawn(async move {
                // Ends with the process, so it does not keep it alive.
                tokio::select! {
                    () = tokio::time::sleep(t) => {}
                    () = p.ended.cancelled() => return,
                }
                if p.running() {
                    p.timed_out.store(true, Ordering::SeqCst);
                    let _ = signal_group(p.pid as i32, libc::SIGKILL);
                }
            });
        }

        // Waiter: records the exit, collects the last output, closes.
        let p = proc.clone();
        let children = ctx.children.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            p.reaped.store(true, Ordering::SeqCst);
            p.ended.cancel();
            let duration_ms = u64::try_from(p.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            children.remove(pid as i32);
            let timed_out = p.timed_out.load(Ordering::SeqCst);
            if timed_out {
                // Children that left the group leader still belong to it.
                let _ = signal_group(pid as i32, libc::SIGKILL);
            }
            let (exit_code, signal) = match &status {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            // Writes to stdin fail from now on.
            *p.input.lock().await = None;
            // Output the process wrote before it exited may still be in
            // the pipes: keep reading while it comes. Children that keep
            // the pipes open get OUTPUT_GRACE of quiet, at most
            // OUTPUT_AFTER_EXIT in all.
            let hard_stop = tokio::time::Instant::now() + OUTPUT_AFTER_EXIT;
            for pump in pumps {
                let abort = pump.abort_handle();
                tokio::pin!(pump);
                loop {
                    let before = p.buffer.bounds().1;
                    let wait = OUTPUT_GRACE
                        .min(hard_stop.saturating_duration_since(tokio::time::Instant::now()));
                    if tokio::time::timeout(wait, &mut pump).await.is_ok() {
                        break;
                    }
                    let moved = p.buffer.bounds().1 != before || p.buffer.writer_waiting();
                    if !moved || tokio::time::Instant::now() >= hard_stop {
                        abort.abort();
                        break;
                    }
                }
            }
            // Published only once its output is all in the buffer, so a
            // reader that sees the exit also sees the whole output.
            *lock(&p.exit) = Some((
                ProcessExit {
                    exit_code,
                    signal,
                    timed_out,
                    duration_ms,
                },
                Instant::now(),
            ));
            p.buffer.close();
            tracing::debug!(pid, ?exit_code, ?signal, timed_out, "process ended");
        });

        if let Some(data) = input {
            let p = proc.clone();
            tokio::spawn(async move {
                if let Err(e) = p.input(&data, true).await {
                    tracing::debug!(pid = p.pid, error = %e, "initial input not delivered");
                }
            });
        }
        tracing::debug!(pid, program = %program, pty = proc.pty.is_some(), "process started");
        Ok(proc)
    }
}
