//! [`Guest`]: the one way to reach a running sandbox's agent.
//! `exec.rs` runs commands, `files.rs` moves files, `processes.rs` drives
//! background processes; this file holds the type, the exec rules and the
//! error classification. It checks the
//! request, then that the sandbox exists and runs, turns the request into a
//! protocol message, owns the exec timeout rules ([`ExecRules`]), and
//! classifies the agent's errors into [`ManagerError`]s, so nothing above
//! it sees the guest protocol.

mod exec;
mod files;
mod forward;
mod processes;
mod transfer;

pub use forward::PortConn;
pub use processes::{MAX_STDIN_WRITE, STREAM_IDLE};
pub use transfer::{SINGLE_READ_MAX, SINGLE_WRITE_MAX, UPLOAD_CHUNK_BYTES};

use crate::sandbox::{Intent, Sandbox};
use crate::service::GuestOps;
use crate::{
    ByteStream, Checksum, Download, ExecOutput, ExecSpec, FileInfo, FileRead, FsEvents,
    GuestErrorKind, Listing, MakeDir, ManagerError, Output, OutputEvents, ProcessInfo,
    ProcessSelector, ProcessSpec, PtySize, Result, Upload, WriteFile, Written,
};
use async_trait::async_trait;
use locale2b_agent_client::{AgentClient, ClientError};
use locale2b_protocol::{ErrorBody, ErrorCode, SandboxId};
use std::sync::Arc;
use std::time::Duration;

/// How long the host waits for an exec answer beyond the command's own
/// timeout: the agent kills the process group when the timeout fires and
/// waits up to 10 s for it to die, then collects output for 250 ms.
pub const EXEC_WAIT_MARGIN: Duration = Duration::from_secs(15);

/// The exec timeout rules, decided here and nowhere else: the default when
/// a request names none, the largest one allowed, and how long the host
/// waits for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecRules {
    /// Timeout when a request names none.
    pub default: Duration,
    /// Largest timeout a request may ask for.
    pub max: Duration,
}

impl ExecRules {
    /// The timeout a command gets.
    ///
    /// # Errors
    /// InvalidInput for zero or more than [`ExecRules::max`].
    pub fn timeout(&self, asked: Option<Duration>) -> Result<Duration> {
        match asked {
            None => Ok(self.default),
            Some(t) if t.is_zero() => Err(ManagerError::InvalidInput(
                "the timeout must be positive".into(),
            )),
            Some(t) if t > self.max => Err(ManagerError::InvalidInput(format!(
                "timeout of {} ms exceeds the server's maximum of {} ms (max_exec_timeout_sec)",
                t.as_millis(),
                self.max.as_millis()
            ))),
            Some(t) => Ok(t),
        }
    }

    /// How long the host waits for the answer of a command with `timeout`.
    pub fn wait(&self, timeout: Duration) -> Duration {
        timeout.saturating_add(EXEC_WAIT_MARGIN)
    }
}

/// The guest of one sandbox, as looked up for one request. Every
/// operation checks its input first, then that the sandbox exists (404)
/// and runs (409), so a bad request is a 400 whatever the sandbox.
#[derive(Debug, Clone)]
pub struct Guest {
    id: SandboxId,
    sandbox: Option<Arc<Sandbox>>,
    rules: ExecRules,
    /// Resumes a paused sandbox whose `auto_resume` is set, before a call.
    manager: Option<std::sync::Weak<crate::SandboxManager>>,
    /// Whether calls count as API activity (not for the manager's own
    /// reads, e.g. metrics).
    touch: bool,
}

/// A stream that keeps its sandbox counted as in use until it is dropped.
struct Attached<S> {
    inner: S,
    _guard: Option<crate::sandbox::AttachGuard>,
}

impl<S: futures::Stream + Unpin> futures::Stream for Attached<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Guest {
    /// The guest of sandbox `id` (`sandbox` is `None` when it is unknown).
    pub fn new(id: SandboxId, sandbox: Option<Arc<Sandbox>>, rules: ExecRules) -> Self {
        Self {
            id,
            sandbox,
            rules,
            manager: None,
            touch: true,
        }
    }

    /// Calls that do not count as activity (the idle timeout keeps running).
    pub fn quiet(mut self) -> Self {
        self.touch = false;
        self
    }

    /// Lets calls resume the sandbox first when it is paused and its
    /// `auto_resume` is set.
    pub fn with_auto_resume(mut self, manager: std::sync::Weak<crate::SandboxManager>) -> Self {
        self.manager = Some(manager);
        self
    }

    /// `stream`, counting the sandbox as in use while it is open (the idle
    /// timeout and eviction leave it alone).
    fn attached<S>(&self, stream: S) -> std::pin::Pin<Box<Attached<S>>>
    where
        S: futures::Stream + Unpin,
    {
        Box::pin(Attached {
            inner: stream,
            _guard: self.sandbox.as_ref().map(Sandbox::attach),
        })
    }

    /// Resumes the sandbox when it is paused (or being paused) and its
    /// `auto_resume` is set, or waits for a resume under way; otherwise
    /// does nothing.
    async fn auto_resume(&self) -> Result<()> {
        let (Some(sb), Some(manager)) = (&self.sandbox, &self.manager) else {
            return Ok(());
        };
        if !sb.record().auto_resume {
            return Ok(());
        }
        if matches!(
            sb.status(),
            crate::SandboxStatus::Pausing
                | crate::SandboxStatus::Paused
                | crate::SandboxStatus::Resuming
        ) {
            // A pause or resume under way finishes first (its lifecycle
            // lock).
            drop(sb.lifecycle.lock().await);
            if sb.status() == crate::SandboxStatus::Paused {
                if let Some(m) = manager.upgrade() {
                    tracing::info!(sandbox_id = %self.id, "auto-resuming the paused sandbox for a call");
                    m.resume(&self.id).await?;
                }
            }
        }
        Ok(())
    }

    /// The sandbox.
    pub fn sandbox_id(&self) -> &SandboxId {
        &self.id
    }

    /// The agent client of a running sandbox; records the activity.
    fn client(&self) -> Result<AgentClient> {
        let sb = self
            .sandbox
            .as_ref()
            .ok_or_else(|| ManagerError::NotFound {
                kind: "sandbox",
                id: self.id.to_string(),
            })?;
        sb.check(Intent::Use)?;
        if self.touch {
            sb.touch();
        }
        sb.client().ok_or_else(|| {
            ManagerError::Conflict(format!(
                "sandbox {} has no agent connection; retry in a moment",
                self.id
            ))
        })
    }

    /// Runs one guest call, counted so that a pause or destroy waits for
    /// it (see [`Sandbox::settle`]). A call that fails because the sandbox
    /// was paused or destroyed under it says so, as a conflict, instead of
    /// blaming the guest.
    async fn call<T>(&self, op: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.auto_resume().await?;
        let guard = self.sandbox.as_ref().map(|s| s.begin_call());
        let result = op.await;
        let epoch = guard.as_ref().map(|g| g.epoch);
        drop(guard);
        result.map_err(|e| match (&self.sandbox, epoch) {
            (Some(sb), Some(epoch)) => match sb.interrupted_since(epoch) {
                Some(reason) if Self::lost_the_guest(&e) => interrupted(&self.id, reason),
                _ => e,
            },
            _ => e,
        })
    }

    /// Whether `e` is what a call sees when the guest goes away under it.
    fn lost_the_guest(e: &ManagerError) -> bool {
        matches!(
            e,
            ManagerError::Vm { .. }
                | ManagerError::Timeout { .. }
                | ManagerError::Guest {
                    kind: GuestErrorKind::Failed { .. },
                    ..
                }
        )
    }

    /// Maps a client failure of `what` to a manager error.
    fn error(&self, what: &str, e: ClientError) -> ManagerError {
        match e {
            ClientError::Agent(body) => guest_error(body),
            e @ ClientError::Unsupported { .. } => {
                ManagerError::Unsupported(format!("{what} in sandbox {}: {e}", self.id))
            }
            ClientError::Timeout { what: w, after } => ManagerError::Timeout {
                what: format!("{what} in sandbox {} ({w})", self.id),
                after,
            },
            other => ManagerError::vm(
                format!(
                    "{what} in sandbox {} failed: the guest agent is unreachable",
                    self.id
                ),
                other,
            ),
        }
    }
}

/// The error of a call that a pause or destroy (`reason`) cut short.
pub fn interrupted(id: &SandboxId, reason: &str) -> ManagerError {
    let hint = if reason == "paused" {
        "; resume it and retry (a command may have kept running in the guest)"
    } else {
        ""
    };
    ManagerError::Conflict(format!(
        "sandbox {id} was {reason} while this call was running{hint}"
    ))
}

/// Classifies an agent error frame.
pub fn guest_error(body: ErrorBody) -> ManagerError {
    let kind = match body.code {
        ErrorCode::NotFound => GuestErrorKind::NotFound,
        ErrorCode::PermissionDenied => GuestErrorKind::PermissionDenied,
        ErrorCode::IsADirectory => GuestErrorKind::IsADirectory,
        ErrorCode::NotADirectory => GuestErrorKind::NotADirectory,
        ErrorCode::InvalidRequest => GuestErrorKind::InvalidRequest,
        ErrorCode::AlreadyExists => GuestErrorKind::AlreadyExists,
        ErrorCode::DirectoryNotEmpty => GuestErrorKind::DirectoryNotEmpty,
        ErrorCode::TooLarge => GuestErrorKind::TooLarge,
        ErrorCode::InvalidState => GuestErrorKind::InvalidState,
        ErrorCode::Timeout => {
            return ManagerError::Timeout {
                what: body.message,
                after: Duration::ZERO,
            }
        }
        code @ (ErrorCode::MalformedFrame
        | ErrorCode::UnknownAction
        | ErrorCode::IncompatibleVersion
        | ErrorCode::Io
        | ErrorCode::Internal
        | ErrorCode::Unknown) => GuestErrorKind::Failed {
            code: code.as_str(),
        },
    };
    ManagerError::Guest {
        kind,
        message: body.message,
    }
}

#[async_trait]
impl GuestOps for Guest {
    async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput> {
        let started = std::time::Instant::now();
        let out = self.call(Guest::exec(self, spec)).await?;
        if let Some(m) = self.manager.as_ref().and_then(std::sync::Weak::upgrade) {
            m.metrics().exec_seconds.observe(started.elapsed());
        }
        Ok(out)
    }
    async fn read_file(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        max: u64,
    ) -> Result<FileRead> {
        self.call(Guest::read_file(self, path, offset, length, max))
            .await
    }
    async fn download(&self, path: &str, offset: u64, length: Option<u64>) -> Result<Download> {
        let d = self
            .call(Guest::download(self, path, offset, length))
            .await?;
        Ok(Download {
            size: d.size,
            bytes: self.attached(d.bytes),
        })
    }
    async fn checksum(&self, path: &str) -> Result<Checksum> {
        self.call(Guest::checksum(self, path)).await
    }
    async fn write_file(&self, file: WriteFile) -> Result<Written> {
        self.call(Guest::write_file(self, file)).await
    }
    async fn list_files(
        &self,
        path: &str,
        recursive: bool,
        max_depth: Option<u32>,
    ) -> Result<Listing> {
        self.call(Guest::list_files(self, path, recursive, max_depth))
            .await
    }
    async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.call(Guest::stat(self, path)).await
    }
    async fn mkdir(&self, dir: MakeDir) -> Result<FileInfo> {
        self.call(Guest::mkdir(self, dir)).await
    }
    async fn upload<'a>(&self, up: Upload, body: ByteStream<'a>) -> Result<Written> {
        self.call(Guest::upload(self, up, body)).await
    }
    async fn watch_dir(&self, path: &str, recursive: bool) -> Result<FsEvents> {
        let events = self.call(Guest::watch_dir(self, path, recursive)).await?;
        Ok(self.attached(events))
    }
    async fn delete(&self, path: &str, recursive: bool) -> Result<()> {
        self.call(Guest::delete(self, path, recursive)).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.call(Guest::rename(self, from, to)).await
    }
    async fn exec_stream(&self, spec: ExecSpec) -> Result<OutputEvents> {
        let events = self.call(Guest::exec_stream(self, spec)).await?;
        Ok(self.attached(events))
    }
    async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessInfo> {
        self.call(Guest::start_process(self, spec)).await
    }
    async fn list_processes(&self) -> Result<Vec<ProcessInfo>> {
        self.call(Guest::list_processes(self)).await
    }
    async fn process(&self, sel: &ProcessSelector) -> Result<ProcessInfo> {
        self.call(Guest::process(self, sel)).await
    }
    async fn read_output(
        &self,
        sel: &ProcessSelector,
        cursor: u64,
        max_bytes: Option<u64>,
    ) -> Result<Output> {
        self.call(Guest::read_output(self, sel, cursor, max_bytes))
            .await
    }
    async fn follow_output(&self, sel: &ProcessSelector, cursor: u64) -> Result<OutputEvents> {
        let events = self.call(Guest::follow_output(self, sel, cursor)).await?;
        Ok(self.attached(events))
    }
    async fn write_stdin(&self, sel: &ProcessSelector, data: Vec<u8>, close: bool) -> Result<()> {
        self.call(Guest::write_stdin(self, sel, data, close)).await
    }
    async fn signal(&self, sel: &ProcessSelector, signal: i32) -> Result<()> {
        self.call(Guest::signal(self, sel, signal)).await
    }
    async fn resize(&self, sel: &ProcessSelector, size: PtySize) -> Result<()> {
        self.call(Guest::resize(self, sel, size)).await
    }
    async fn open_port(&self, port: u16) -> Result<PortConn> {
        self.connect_port(port).await
    }
    async fn remove_process(&self, sel: &ProcessSelector) -> Result<()> {
        self.call(Guest::remove_process(self, sel)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timeout_rules() {
        let r = ExecRules {
            default: Duration::from_secs(300),
            max: Duration::from_secs(3600),
        };
        assert_eq!(r.timeout(None).unwrap(), Duration::from_secs(300));
        assert_eq!(
            r.timeout(Some(Duration::from_millis(5))).unwrap(),
            Duration::from_millis(5)
        );
        let err = r.timeout(Some(Duration::ZERO)).unwrap_err();
        assert!(matches!(err, ManagerError::InvalidInput(m) if m.contains("positive")));
        let err = r.timeout(Some(Duration::from_secs(3601))).unwrap_err();
        assert!(
            matches!(&err, ManagerError::InvalidInput(m) if m.contains("3600000 ms")),
            "{err}"
        );
        assert_eq!(
            r.wait(Duration::from_secs(1)),
            Duration::from_secs(1) + EXEC_WAIT_MARGIN
        );
    }

    #[test]
    fn agent_errors_are_classified() {
        let e = guest_error(ErrorBody::new(ErrorCode::NotFound, "/x: no such file"));
        assert!(matches!(
            e,
            ManagerError::Guest {
                kind: GuestErrorKind::NotFound,
                ..
            }
        ));
        let e = guest_error(ErrorBody::new(ErrorCode::Io, "disk"));
        assert!(matches!(
            e,
            ManagerError::Guest {
                kind: GuestErrorKind::Failed { code: "io" },
                ..
            }
        ));
        let e = guest_error(ErrorBody::new(ErrorCode::Timeout, "slow"));
        assert!(matches!(e, ManagerError::Timeout { .. }));
    }
}
