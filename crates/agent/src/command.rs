//! What every command the agent starts shares: the user it runs as, its
//! environment, and the set-up in the child before `exec` (own session and
//! process group, dropped privileges, optionally a controlling terminal).

use locale2b_protocol::{ErrorBody, ErrorCode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// PATH given to commands when neither the agent nor `init` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// Looks `user` (a name or a numeric uid) up in the guest's `/etc/passwd`.
///
/// # Errors
/// `not_found` for an unknown name.
pub fn lookup_user(user: &str) -> Result<UserSpec, ErrorBody> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    lookup_user_in(user, &passwd, &group)
}

/// The environment of a command: the agent's own (without kernel
/// command-line options), `PATH`, the user's `HOME`/`USER`/`LOGNAME`, the
/// sandbox `defaults` from `init`, then the request's `extra`.
pub fn build_env(
    defaults: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
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
    env.extend(defaults.clone());
    env.extend(extra.clone());
    env
}

/// The directory a command runs in: `requested` (relative paths from
/// `workspace`), else `workspace` when it exists, else `/`. Whether it
/// exists is the caller's check.
///
/// # Errors
/// `invalid_request` for an empty path or one with a NUL byte.
pub fn working_dir(workspace: &Path, requested: Option<&str>) -> Result<PathBuf, ErrorBody> {
    match requested {
        Some(d) => crate::fs::resolve_in(workspace, d),
        None if workspace.is_dir() => Ok(workspace.to_path_buf()),
        None => Ok(PathBuf::from("/")),
    }
}

/// Sends `signal` to every process of group `pgid`.
///
/// # Errors
/// The OS error (`ESRCH` when the group is gone).
pub fn signal_group(pgid: i32, signal: i32) -> std::io::Result<()> {
    // pgid > 1 is checked so we never signal group 0/1 or everything.
    if pgid <= 1 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill(2) with a negative pid signals a process group; it takes
    // no pointers.
    if unsafe { libc::kill(-pgid, signal) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child, between fork and exec, the leader of a new session
/// (so its pid is its process group, and signals reach its whole group),
/// give it `tty` (fd 0) as controlling terminal when `controlling_tty`, and
/// drop to `user`'s ids.
pub fn pre_exec_setup(
    cmd: &mut tokio::process::Command,
    user: Option<&UserSpec>,
    controlling_tty: bool,
) {
    let ids = user.map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
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
}
