//! [`Guest`]: the one way to reach a running sandbox's agent. It checks the
//! request, then that the sandbox exists and runs, turns the request into a
//! protocol message, owns the exec timeout rules ([`ExecRules`]), and
//! classifies the agent's errors into [`ManagerError`]s, so nothing above
//! it sees the guest protocol.

use crate::sandbox::{Intent, Sandbox};
use crate::service::GuestOps;
use crate::{
    ExecOutput, ExecSpec, FileInfo, FileRead, GuestErrorKind, Listing, ManagerError, Result,
    WriteFile, Written,
};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use locale2b_agent_client::{AgentClient, ClientError};
use locale2b_protocol::{
    ContentEncoding, DeleteFileRequest, ErrorBody, ErrorCode, ExecRequest, ListFilesRequest,
    MkdirRequest, ReadFileRequest, SandboxId, WriteFileRequest,
};
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
}

impl Guest {
    /// The guest of sandbox `id` (`sandbox` is `None` when it is unknown).
    pub fn new(id: SandboxId, sandbox: Option<Arc<Sandbox>>, rules: ExecRules) -> Self {
        Self { id, sandbox, rules }
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
        sb.touch();
        sb.client().ok_or_else(|| {
            ManagerError::Conflict(format!(
                "sandbox {} has no agent connection; retry in a moment",
                self.id
            ))
        })
    }

    /// Maps a client failure of `what` to a manager error.
    fn error(&self, what: &str, e: ClientError) -> ManagerError {
        match e {
            ClientError::Agent(body) => guest_error(body),
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
        if spec.command.trim().is_empty() {
            return Err(ManagerError::InvalidInput(
                "command must not be empty".into(),
            ));
        }
        let timeout = self.rules.timeout(spec.timeout)?;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let req = ExecRequest {
            command: spec.command,
            working_dir: Some(spec.working_dir.unwrap_or_else(|| "/workspace".into())),
            env: spec.env,
            stdin_b64: spec.stdin.map(|b| B64.encode(b)),
            timeout_ms: Some(timeout_ms),
            user: spec.user,
            max_output_bytes: spec.max_output_bytes,
        };
        let out = self
            .client()?
            .exec(req, self.rules.wait(timeout))
            .await
            .map_err(|e| match self.error("exec", e) {
                // A missing working directory or user is the request's
                // fault; a 404 on exec would read as "no such sandbox".
                ManagerError::Guest {
                    kind: GuestErrorKind::NotFound,
                    message,
                } => ManagerError::InvalidInput(message),
                other => other,
            })?;
        let error = if out.timed_out {
            Some(format!("command timed out after {timeout_ms} ms"))
        } else {
            out.signal
                .map(|sig| format!("command killed by signal {sig}"))
        };
        Ok(ExecOutput {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            signal: out.signal,
            timed_out: out.timed_out,
            truncated: out.truncated,
            duration_ms: out.duration_ms,
            error,
        })
    }

    async fn read_file(&self, path: &str, offset: u64, length: Option<u64>) -> Result<FileRead> {
        let req = ReadFileRequest {
            path: path.to_owned(),
            offset,
            length,
        };
        let got = self
            .client()?
            .read_file(req)
            .await
            .map_err(|e| self.error("read_file", e))?;
        let data = B64
            .decode(&got.content_b64)
            .map_err(|e| ManagerError::Internal {
                context: "the guest agent sent invalid base64".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(FileRead {
            data,
            offset: got.offset,
            size: got.size,
            eof: got.eof,
        })
    }

    async fn write_file(&self, file: WriteFile) -> Result<Written> {
        if file.path.is_empty() {
            return Err(ManagerError::InvalidInput("path must not be empty".into()));
        }
        let req = WriteFileRequest {
            path: file.path,
            content: B64.encode(&file.data),
            encoding: ContentEncoding::Base64,
            mode: file.mode,
            create_parents: file.create_parents,
            append: file.append,
        };
        let w = self
            .client()?
            .write_file(req)
            .await
            .map_err(|e| self.error("write_file", e))?;
        Ok(Written {
            path: w.path,
            size: w.size,
        })
    }

    async fn list_files(
        &self,
        path: &str,
        recursive: bool,
        max_depth: Option<u32>,
    ) -> Result<Listing> {
        let req = ListFilesRequest {
            path: path.to_owned(),
            recursive,
            max_depth,
            max_entries: None,
        };
        self.client()?
            .list_files(req)
            .await
            .map_err(|e| self.error("list_files", e))
    }

    async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.client()?
            .stat(path)
            .await
            .map_err(|e| self.error("stat", e))
    }

    async fn mkdir(&self, path: &str, parents: bool, mode: Option<u32>) -> Result<FileInfo> {
        let req = MkdirRequest {
            path: path.to_owned(),
            parents,
            mode,
        };
        self.client()?
            .mkdir(req)
            .await
            .map_err(|e| self.error("mkdir", e))
    }

    async fn delete(&self, path: &str, recursive: bool) -> Result<()> {
        let req = DeleteFileRequest {
            path: path.to_owned(),
            recursive,
        };
        self.client()?
            .delete_file(req)
            .await
            .map_err(|e| self.error("delete_file", e))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.client()?
            .rename(from, to)
            .await
            .map_err(|e| self.error("rename", e))
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
