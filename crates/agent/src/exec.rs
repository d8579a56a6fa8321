//! `exec`: run `/bin/sh -c` in its own session and process group, with a
//! timeout that kills the whole group, output caps and a chosen user.

use crate::context::AgentContext;
use crate::fs::resolve;
use base64::Engine as _;
use locale2b_protocol::{
    ErrorBody, ErrorCode, ExecRequest, ExecResponse, DEFAULT_EXEC_OUTPUT_LIMIT,
};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long output is still collected after the shell exited, for
/// background children that keep the pipes open.
const OUTPUT_GRACE: Duration = Duration::from_millis(250);

/// PATH given to commands when neither the agent nor `init` sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A user to run a command as, from `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// Login name (the uid as text when not in `/etc/passwd`).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
}

/// Looks `user` (a name or a numeric uid) up in `passwd`/`group` text.
///
/// # Errors
/// `not_found` for an unknown name.
pub fn lookup_user_in(user: &str, passwd: &str, group: &str) -> Result<UserSpec, ErrorBody> {
    let numeric: Option<u32> = user.parse().ok();
    let found = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        let gid: u32 = f[3].parse().ok()?;
        let matches = f[0] == user || numeric == Some(uid);
        matches.then(|| (f[0].to_owned(), uid, gid, f[5].to_owned()))
    });
    let (name, uid, gid, home) = match (found, numeric) {
        (Some(t), _) => t,
        (None, Some(uid)) => (uid.to_string(), uid, uid, "/".to_owned()),
        (None, None) => {
            return Err(ErrorBody::new(
                ErrorCode::NotFound,
                format!("user {user:?} not found in /etc/passwd"),
            ))
        }
    };
    let mut groups = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
    }
    Ok(UserSpec {
        name,
        uid,
        gid,
        groups,
        home,
    })
}

fn lookup_user(user: &str) -> Result<UserSpec, ErrorBody> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    lookup_user_in(user, &passwd, &group)
}

/// Kills every process of group `pgid`.
fn kill_group(pgid: i32) {
    // pgid > 1 is checked so we never signal group 0/1 or everything.
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; it
        // takes no pointers.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

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

fn build_env(
    ctx: &AgentContext,
    req: &ExecRequest,
    user: Option<&UserSpec>,
) -> BTreeMap<String, String> {
    // Kernel command-line options such as `locale2b.x=y` reach PID 1 as
    // environment variables; they are not meant for commands.
    let mut env: BTreeMap<String, String> =
        std::env::vars().filter(|(k, _)| !k.contains('.')).collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    if let Some(u) = user {
        env.insert("HOME".into(), u.home.clone());
        env.insert("USER".into(), u.name.clone());
        env.insert("LOGNAME".into(), u.name.clone());
    }
    env.extend(ctx.state().env);
    env.extend(req.env.clone());
    env
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
    let cwd = match &req.working_dir {
        Some(d) => resolve(ctx, d)?,
        None if ctx.config.workspace_dir.is_dir() => ctx.config.workspace_dir.clone(),
        None => Path::new("/").to_path_buf(),
    };
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
        .envs(build_env(ctx, &req, user.as_ref()))
        .current_dir(&cwd)
        .stdin(if req.stdin_b64.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let ids = user.as_ref().map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, setgroups, setgid,
    // setuid) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

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
            kill_group(pid);
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
        kill_group(pid);
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

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:alice\nnogroup:x:65534:\nalice:x:1000:\n";

    #[test]
    fn users_by_name_and_uid() {
        let a = lookup_user_in("alice", PASSWD, GROUP).unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(a.groups, vec![1000, 27]);
        let n = lookup_user_in("65534", PASSWD, GROUP).unwrap();
        assert_eq!(n.name, "nobody");
        let unknown_uid = lookup_user_in("4242", PASSWD, GROUP).unwrap();
        assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 4242));
        let err = lookup_user_in("mallory", PASSWD, GROUP).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
    }

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
