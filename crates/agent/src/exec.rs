//! `exec`: run `/bin/sh -c` in its own session and process group, with a
//! timeout that kills the whole group, output caps and a chosen user.

use crate::command::{build_env, lookup_user, pre_exec_setup, signal_group, working_dir};
use crate::context::AgentContext;
use base64::Engine as _;
use locale2b_protocol::{
    ErrorBody, ErrorCode, ExecRequest, ExecResponse, DEFAULT_EXEC_OUTPUT_LIMIT,
};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long output is still collected after the shell exited, for
/// background children that keep the pipes open.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// Reads a stream to its end (or until `stop`), keeping at most `cap`
/// bytes and discarding the rest, so memory stays bounded.
async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    stop: CancellationToken,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => break,
            n = r.read(&mut scratch) => n,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let take = n.min(room);
                kept.extend_from_slice(&scratch[..take]);
                if take < n {
                    truncated = true;
                }
            }
        }
    }
    (kept, truncated)
}

/// Runs one `exec` request.
///
/// # Errors
/// `invalid_request` (bad base64, NUL in the command), `not_found` (unknown
/// user, missing working directory), `io` when the shell cannot start.
pub async fn exec(ctx: &Arc<AgentContext>, req: ExecRequest) -> Result<ExecResponse, ErrorBody> {
    if req.command.contains('\0') {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "command contains a NUL byte",
        ));
    }
    let stdin = match &req.stdin_b64 {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|e| {
                ErrorBody::new(
                    ErrorCode::InvalidRequest,
                    format!("stdin_b64 is not valid base64: {e}"),
                )
            })?,
        None => Vec::new(),
    };
    let user = req.user.as_deref().map(lookup_user).transpose()?;
    let cwd = working_dir(&ctx.config.workspace_dir, req.working_dir.as_deref())?;
    if !cwd.is_dir() {
        return Err(ErrorBody::new(
            ErrorCode::NotFound,
            format!("working directory {} does not exist", cwd.display()),
        ));
    }
    let cap = usize::try_from(req.max_output_bytes.unwrap_or(DEFAULT_EXEC_OUTPUT_LIMIT))
        .unwrap_or(usize::MAX)
        .min(ctx.config.max_frame);

    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&req.command)
        .env_clear()
        .envs(build_env(&ctx.state().env, &req.env, user.as_ref()))
        .current_dir(&cwd)
        .stdin(if req.stdin_b64.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    pre_exec_setup(&mut cmd, user.as_ref(), false);

    let started = Instant::now();
    let mut child = ctx.children.spawn(&mut cmd).map_err(|e| {
        let code = ErrorCode::from_io_kind(e.kind());
        ErrorBody::new(
            if code == ErrorCode::NotFound {
                ErrorCode::Io
            } else {
                code
            },
            format!("cannot start /bin/sh: {e}"),
        )
    })?;
    let pid = child.id().map_or(0, |p| p as i32);
    let stop = CancellationToken::new();
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_capped(s, cap, stop.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(read_capped(s, cap, stop.clone())));
    let stdin_task = child.stdin.take().map(|mut w| {
        tokio::spawn(async move {
            let _ = w.write_all(&stdin).await;
            let _ = w.shutdown().await;
        })
    });

    let waited = match req.timeout_ms {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), child.wait()).await,
        None => Ok(child.wait().await),
    };
    let (status, timed_out) = match waited {
        Ok(status) => (status, false),
        Err(_elapsed) => {
            let _ = signal_group(pid, libc::SIGKILL);
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("child did not die after SIGKILL")));
            (status, true)
        }
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    ctx.children.remove(pid);
    if timed_out {
        // Children that left the shell still belong to its group.
        let _ = signal_group(pid, libc::SIGKILL);
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let collect = async {
        let out = match stdout {
            Some(t) => t.await.unwrap_or_default(),
            None => Default::default(),
        };
        let err = match stderr {
            Some(t) => t.await.unwrap_or_default(),
            None => Default::default(),
        };
        (out, err)
    };
    // Background children may hold the pipes open: collect what arrives
    // within a grace period, then stop reading.
    let stopper = stop.clone();
    let grace = tokio::spawn(async move {
        tokio::time::sleep(OUTPUT_GRACE).await;
        stopper.cancel();
    });
    let ((out, out_trunc), (err, err_trunc)) = collect.await;
    grace.abort();
    let status = status.map_err(|e| {
        ErrorBody::new(
            ErrorCode::Io,
            format!("waiting for the command failed: {e}"),
        )
    })?;
    Ok(ExecResponse {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        truncated: out_trunc || err_trunc,
        duration_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capped_reader_discards_past_the_cap() {
        let data = vec![b'x'; 300_000];
        let (kept, truncated) = read_capped(&data[..], 1000, CancellationToken::new()).await;
        assert_eq!(kept.len(), 1000);
        assert!(truncated);
        let (kept, truncated) = read_capped(&data[..10], 1000, CancellationToken::new()).await;
        assert_eq!(kept.len(), 10);
        assert!(!truncated);
    }
}
