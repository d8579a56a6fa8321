//! Init mode: what the agent does when it is the guest's PID 1.
//!
//! [`setup_system`] runs before the async runtime starts: it mounts the
//! pseudo filesystems, builds the writable overlay root from `/dev/vdb`
//! (lower = the read-only base root, upper/work on vdb) and pivots into it.
//! [`run_reaper`] reaps orphaned zombies without touching the children that
//! `exec` waits for, and [`run_signal_handler`] turns SIGTERM/SIGINT into a
//! graceful power-off.

use crate::context::AgentContext;
use crate::AgentError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::Path;
use std::sync::Arc;

/// Where the writable disk is mounted (inside the new root too).
pub const RW_MOUNT: &str = "/run/locale2b/rw";
/// Where the overlay root is assembled before the pivot.
pub const NEW_ROOT: &str = "/run/locale2b/root";
/// The writable disk.
pub const RW_DEVICE: &str = "/dev/vdb";
/// Hostname set at boot, before the host's `init` names the sandbox.
pub const BOOT_HOSTNAME: &str = "locale2b";

fn step(what: &str) -> impl Fn(nix::Error) -> AgentError + '_ {
    move |e| AgentError::Init {
        step: what.to_owned(),
        source: std::io::Error::from(e),
    }
}

fn io_step(what: &str) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Init {
        step: what.to_owned(),
        source,
    }
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(target).map_err(io_step(target))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        // Already mounted (e.g. devtmpfs automounted by the kernel).
        Err(nix::Error::EBUSY) => Ok(()),
        Err(e) => Err(step(&format!("mount {fstype} on {target}"))(e)),
    }
}

fn move_mount(from: &str, to: &str) -> Result<(), AgentError> {
    std::fs::create_dir_all(to).map_err(io_step(to))?;
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step(&format!("move mount {from} to {to}")))
}

/// Points stdout and stderr at `/dev/console` (the serial log on the host).
pub fn log_to_console() {
    use std::os::fd::AsRawFd as _;
    if let Ok(console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        for target in [1, 2] {
            // SAFETY: dup2 on two valid descriptor numbers; `console` stays
            // open for the duration of the call.
            unsafe {
                libc::dup2(console.as_raw_fd(), target);
            }
        }
    }
}

/// Mounts the pseudo filesystems, sets up the overlay root when the
/// writable disk exists, creates `/workspace` and sets the boot hostname.
/// Steps that fail are logged; only failures that leave no usable root are
/// returned.
///
/// # Errors
/// [`AgentError::Init`] when the pivot into the overlay root fails half-way.
pub fn setup_system() -> Result<(), AgentError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let essential = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (src, target, fstype, flags, data) in essential {
        if let Err(e) = mount_fs(src, target, fstype, flags, data) {
            tracing::error!(error = %error_chain(&e), "mount failed");
        }
    }
    log_to_console();
    if Path::new(RW_DEVICE).exists() {
        if let Err(e) = overlay_root() {
            tracing::error!(error = %error_chain(&e), "overlay root failed; staying on the read-only root");
        }
    } else {
        tracing::warn!("no {RW_DEVICE}: the root stays read-only");
    }
    let late = [
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (src, target, fstype, flags, data) in late {
        if let Err(e) = mount_fs(src, target, fstype, flags, data) {
            tracing::error!(error = %error_chain(&e), "mount failed");
        }
    }
    if let Err(e) = std::fs::create_dir_all("/workspace") {
        tracing::warn!(error = %e, "cannot create /workspace");
    }
    if let Err(e) = crate::system::set_hostname(BOOT_HOSTNAME) {
        tracing::warn!(error = %e, "cannot set hostname");
    }
    if let Err(e) = crate::system::bring_up_loopback() {
        tracing::warn!(error = %e, "cannot bring the loopback interface up");
    }
    // SAFETY: reboot(LINUX_REBOOT_CMD_CAD_OFF) takes no pointers; it makes
    // Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
    unsafe {
        libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF);
    }
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    if std::env::var_os("HOME").is_none_or(|h| h == "/") {
        std::env::set_var("HOME", "/root");
    }
    Ok(())
}

/// Mounts vdb, assembles the overlay at [`NEW_ROOT`], moves the pseudo
/// filesystems into it and pivots. The old root is detached.
fn overlay_root() -> Result<(), AgentError> {
    mount_fs(RW_DEVICE, RW_MOUNT, "ext4", MsFlags::MS_NOATIME, None)?;
    for d in ["upper", "work"] {
        let p = format!("{RW_MOUNT}/{d}");
        std::fs::create_dir_all(&p).map_err(io_step(&p))?;
    }
    let opts = format!("lowerdir=/,upperdir={RW_MOUNT}/upper,workdir={RW_MOUNT}/work");
    mount_fs(
        "overlay",
        NEW_ROOT,
        "overlay",
        MsFlags::empty(),
        Some(&opts),
    )?;
    // A fresh /run in the new root, then the rw disk moved under it so it
    // stays visible after the pivot.
    mount_fs(
        "tmpfs",
        &format!("{NEW_ROOT}/run"),
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    move_mount(RW_MOUNT, &format!("{NEW_ROOT}{RW_MOUNT}"))?;
    for m in ["/proc", "/sys", "/dev"] {
        move_mount(m, &format!("{NEW_ROOT}{m}"))?;
    }
    std::env::set_current_dir(NEW_ROOT).map_err(io_step("chdir to the new root"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // lazy unmount then removes it (the rw disk lives on through the
    // overlay and its moved mount).
    nix::unistd::pivot_root(".", ".").map_err(step("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the old root"))?;
    std::env::set_current_dir("/").map_err(io_step("chdir /"))?;
    tracing::info!("overlay root ready");
    Ok(())
}

/// Formats an error with its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

/// Zombie children of this process that `exec` is not waiting for.
fn unregistered_zombies(registered: &std::collections::HashSet<i32>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !registered.contains(pid))
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name (which may contain spaces).
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut f = rest.split_whitespace();
            let state = f.next();
            let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(me)
        })
        .collect()
}

/// Reaps orphaned zombies on every SIGCHLD (and every few seconds), leaving
/// the children registered by `exec` to their waiters.
pub async fn run_reaper(ctx: Arc<AgentContext>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut sigchld) = signal(SignalKind::child()) else {
        tracing::error!("cannot watch SIGCHLD; zombies will not be reaped");
        return;
    };
    loop {
        tokio::select! {
            () = ctx.shutdown_token().cancelled() => return,
            _ = sigchld.recv() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
        let registered = ctx.children.lock();
        for pid in unregistered_zombies(&registered) {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        drop(registered);
    }
}

/// Powers off (after sync) on SIGTERM or SIGINT.
pub async fn run_signal_handler(ctx: Arc<AgentContext>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("termination signal, shutting down");
    ctx.request_shutdown();
    let _ = tokio::task::spawn_blocking(crate::system::power_off).await;
}
