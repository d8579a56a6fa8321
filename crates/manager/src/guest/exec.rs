//! Commands: `exec` (wait for the result) and its streamed form. Both run
//! the command as an ephemeral process of the agent's table and follow its
//! output, so output of any size arrives in frames; an agent of protocol 1
//! (an older image) gets the one-frame `exec` request instead.

use super::processes::{events, STREAM_IDLE};
use super::Guest;
use crate::{
    ExecOutput, ExecSpec, GuestErrorKind, ManagerError, OutputEvent, OutputEvents, OutputStream,
    Result,
};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt as _;
use locale2b_protocol::{ExecRequest, ProcessStartRequest, Request, DEFAULT_EXEC_OUTPUT_LIMIT};
use std::time::Duration;

/// A missing working directory or user is the request's fault (400); a 404
/// on exec would read as "no such sandbox".
fn request_fault(e: ManagerError) -> ManagerError {
    match e {
        ManagerError::Guest {
            kind: GuestErrorKind::NotFound | GuestErrorKind::InvalidRequest,
            message,
        } => ManagerError::InvalidInput(message),
        other => other,
    }
}

impl Guest {
    /// Checks the spec and applies the timeout rules.
    fn exec_timeout(&self, spec: &ExecSpec) -> Result<Duration> {
        if spec.command.trim().is_empty() {
            return Err(ManagerError::InvalidInput(
                "command must not be empty".into(),
            ));
        }
        crate::check_env("env", &spec.env)?;
        self.rules.timeout(spec.timeout)
    }

    fn exec_start(spec: ExecSpec, timeout: Duration) -> ProcessStartRequest {
        ProcessStartRequest {
            command: Some(spec.command),
            cwd: Some(spec.working_dir.unwrap_or_else(|| "/workspace".into())),
            env: spec.env,
            user: spec.user,
            stdin: spec.stdin.is_some(),
            input_b64: spec.stdin.map(|b| B64.encode(b)),
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
            follow: true,
            ephemeral: true,
            ..ProcessStartRequest::default()
        }
    }

    pub(super) async fn exec_stream(&self, spec: ExecSpec) -> Result<OutputEvents> {
        let timeout = self.exec_timeout(&spec)?;
        let req = Self::exec_start(spec, timeout);
        let stream = self
            .client()?
            .stream(Request::ProcessStart(req), STREAM_IDLE)
            .await
            .map_err(|e| request_fault(self.error("exec", e)))?;
        // The first item carries a start refusal (bad directory, user).
        let mut events = events(self.clone(), "exec", stream).peekable();
        if let Some(Err(_)) = std::pin::Pin::new(&mut events).peek().await {
            if let Some(Err(e)) = events.next().await {
                return Err(request_fault(e));
            }
        }
        Ok(Box::pin(events))
    }

    pub(super) async fn exec(&self, spec: ExecSpec) -> Result<ExecOutput> {
        let timeout = self.exec_timeout(&spec)?;
        let cap = usize::try_from(spec.max_output_bytes.unwrap_or(DEFAULT_EXEC_OUTPUT_LIMIT))
            .unwrap_or(usize::MAX);
        let wait = self.rules.wait(timeout);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let started = match self.exec_stream(spec.clone()).await {
            Ok(events) => events,
            Err(ManagerError::Unsupported(_)) => return self.exec_v1(spec, timeout).await,
            Err(e) => return Err(e),
        };
        let collect = async {
            let mut events = started;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let mut truncated = false;
            while let Some(event) = events.next().await {
                match event? {
                    OutputEvent::Data(chunk) => {
                        let sink = match chunk.stream {
                            OutputStream::Stderr => &mut stderr,
                            _ => &mut stdout,
                        };
                        let room = cap.saturating_sub(sink.len());
                        if chunk.data.len() > room {
                            truncated = true;
                        }
                        sink.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
                    }
                    OutputEvent::Dropped { .. } => truncated = true,
                    OutputEvent::End { exit, .. } => return Ok((stdout, stderr, truncated, exit)),
                    OutputEvent::Started { .. } | OutputEvent::Keepalive => {}
                }
            }
            Err(ManagerError::Vm {
                message: format!("exec in sandbox {} ended without its result", self.id),
                source: None,
            })
        };
        let (stdout, stderr, truncated, exit) = tokio::time::timeout(wait, collect)
            .await
            .map_err(|_| ManagerError::Timeout {
                what: format!("exec in sandbox {}", self.id),
                after: wait,
            })??;
        let exit = exit.unwrap_or(locale2b_protocol::ProcessExit {
            exit_code: None,
            signal: None,
            timed_out: false,
            duration_ms: 0,
        });
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            exit_code: exit.exit_code,
            signal: exit.signal,
            timed_out: exit.timed_out,
            truncated,
            duration_ms: exit.duration_ms,
            error: exec_error(exit.timed_out, exit.signal, timeout_ms),
        })
    }

    /// `exec` for an agent of protocol 1: one request, one frame.
    async fn exec_v1(&self, spec: ExecSpec, timeout: Duration) -> Result<ExecOutput> {
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
            .map_err(|e| request_fault(self.error("exec", e)))?;
        Ok(ExecOutput {
            error: exec_error(out.timed_out, out.signal, timeout_ms),
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            signal: out.signal,
            timed_out: out.timed_out,
            truncated: out.truncated,
            duration_ms: out.duration_ms,
        })
    }
}

/// `None` when the command ran to completion (whatever its exit code), else
/// why it did not, in words.
fn exec_error(timed_out: bool, signal: Option<i32>, timeout_ms: u64) -> Option<String> {
    if timed_out {
        Some(format!("command timed out after {timeout_ms} ms"))
    } else {
        signal.map(|sig| format!("command killed by signal {sig}"))
    }
}
