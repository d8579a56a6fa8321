//! `watch_dir` (protocol 3): changes under a directory, reported as they
//! happen until the host closes the stream.
//!
//! Built on inotify. The answer is a `watching` event once the watches are
//! in place, then one `fs` event per kind of change (`create`, `write`,
//! `remove`, `rename`, `chmod`) with the entry's path relative to the
//! watched directory, and `keepalive` events while nothing happens. A
//! recursive watch adds every subdirectory, and each directory created (or
//! moved in) later. The stream ends with `done` when the watched directory
//! itself goes away, and with an error when the kernel's event queue
//! overflowed (events were lost: the host must not pretend otherwise).

use crate::context::AgentContext;
use crate::fs::resolve;
use crate::process::stream::send;
use locale2b_protocol::{
    ErrorBody, ErrorCode, FrameError, FsOp, Outcome, Response, StreamEvent, WatchDirRequest,
};
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// How long a watch may be quiet before a keepalive is sent.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most directories one watch adds (beyond, subdirectories are not watched
/// and the stream says so with an error).
const MAX_WATCHED_DIRS: usize = 8192;

/// The changes a watch asks the kernel for.
fn mask() -> F {
    F::IN_CREATE
        | F::IN_MODIFY
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_ATTRIB
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR
}

/// The reported kinds of one kernel event, in a fixed order.
pub fn ops_of(mask: F) -> Vec<FsOp> {
    let mut ops = Vec::new();
    if mask.intersects(F::IN_CREATE | F::IN_MOVED_TO) {
        ops.push(FsOp::Create);
    }
    if mask.intersects(F::IN_MOVED_FROM) {
        ops.push(FsOp::Rename);
    }
    if mask.intersects(F::IN_ATTRIB) {
        ops.push(FsOp::Chmod);
    }
    if mask.intersects(F::IN_MODIFY) {
        ops.push(FsOp::Write);
    }
    if mask.intersects(F::IN_DELETE) {
        ops.push(FsOp::Remove);
    }
    ops
}

/// Every watched directory and its path relative to the root.
struct Watches {
    inotify: Inotify,
    /// A duplicate of the inotify descriptor, registered for readiness.
    ready: AsyncFd<OwnedFd>,
    root: PathBuf,
    root_wd: WatchDescriptor,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    recursive: bool,
}

impl Watches {
    fn new(root: &Path, recursive: bool) -> Result<Self, ErrorBody> {
        let io = |e: nix::Error| {
            ErrorBody::io(
                &root.display().to_string(),
                &std::io::Error::from_raw_os_error(e as i32),
            )
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io)?;
        let root_wd = inotify.add_watch(root, mask()).map_err(io)?;
        let dup = inotify
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| ErrorBody::io("inotify", &e))?;
        // SAFETY: the OwnedFd keeps the duplicate open, referring to the
        // same inotify instance, for as long as the AsyncFd owns it.
        let ready = unsafe { AsyncFd::register(dup) }
            .map_err(|e| ErrorBody::io("inotify", &std::io::Error::from(e)))?;
        let mut w = Self {
            inotify,
            ready,
            root: root.to_path_buf(),
            root_wd,
            dirs: HashMap::new(),
            recursive,
        };
        w.dirs.insert(root_wd, PathBuf::new());
        if recursive {
            w.add_tree(Path::new(""))?;
        }
        Ok(w)
    }

    /// Watches every directory below `rel` (relative to the root).
    fn add_tree(&mut self, rel: &Path) -> Result<(), ErrorBody> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(self.root.join(&dir)) else {
                continue;
            };
            for entry in rd.flatten() {
                // Symlinks are not followed (file_type does not follow).
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = dir.join(entry.file_name());
                if self.dirs.len() >= MAX_WATCHED_DIRS {
                    return Err(ErrorBody::new(
                        ErrorCode::TooLarge,
                        format!(
                            "{}: more than {MAX_WATCHED_DIRS} directories to watch; watch a smaller tree",
                            self.root.display()
                        ),
                    ));
                }
                // A directory removed meanwhile is simply not watched.
                if let Ok(wd) = self.inotify.add_watch(&self.root.join(&child), mask()) {
                    self.dirs.insert(wd, child.clone());
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    /// Reads the pending kernel events.
    async fn next(&self) -> std::io::Result<Vec<InotifyEvent>> {
        loop {
            let mut guard = self.ready.readable().await?;
            match self.inotify.read_events() {
                Ok(events) => return Ok(events),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(std::io::Error::from_raw_os_error(e as i32)),
            }
        }
    }
}

/// What one batch of kernel events means for the stream.
enum Step {
    /// Events to send.
    Events(Vec<(String, FsOp)>),
    /// The watched directory is gone.
    RootGone(Vec<(String, FsOp)>),
}

fn translate(w: &mut Watches, events: Vec<InotifyEvent>) -> Result<Step, ErrorBody> {
    let mut out = Vec::new();
    let mut root_gone = false;
    for ev in events {
        if ev.mask.contains(F::IN_Q_OVERFLOW) {
            return Err(ErrorBody::new(
                ErrorCode::Internal,
                "too many changes at once: the kernel's event queue overflowed and events were lost; watch again",
            ));
        }
        if ev.mask.contains(F::IN_IGNORED) {
            if ev.wd == w.root_wd {
                root_gone = true;
            }
            w.dirs.remove(&ev.wd);
            continue;
        }
        if ev.wd == w.root_wd && ev.mask.intersects(F::IN_DELETE_SELF | F::IN_MOVE_SELF) {
            root_gone = true;
            continue;
        }
        let (Some(dir), Some(name)) = (w.dirs.get(&ev.wd), ev.name.as_ref()) else {
            continue;
        };
        let rel = dir.join(name);
        if w.recursive
            && ev.mask.contains(F::IN_ISDIR)
            && ev.mask.intersects(F::IN_CREATE | F::IN_MOVED_TO)
        {
            if let Ok(wd) = w.inotify.add_watch(&w.root.join(&rel), mask()) {
                w.dirs.insert(wd, rel.clone());
                w.add_tree(&rel)?;
            }
        }
        let name = rel.to_string_lossy().into_owned();
        out.extend(ops_of(ev.mask).into_iter().map(|op| (name.clone(), op)));
    }
    Ok(if root_gone {
        Step::RootGone(out)
    } else {
        Step::Events(out)
    })
}

/// Runs a `watch_dir` request on the connection (see the module docs).
/// Returns without a final frame when the host closes the stream.
///
/// # Errors
/// Frame write errors (the host went away).
pub async fn stream<W, R>(
    ctx: &Arc<AgentContext>,
    id: u64,
    req: &WatchDirRequest,
    w: &mut W,
    r: &mut R,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let max = ctx.config.max_frame;
    let fail = |body: ErrorBody| Outcome::Error(body);
    let root = match resolve(ctx, &req.path) {
        Ok(p) => p,
        Err(e) => return send(w, id, fail(e), max).await,
    };
    match std::fs::metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            let body = ErrorBody::new(
                ErrorCode::NotADirectory,
                format!("{}: not a directory", root.display()),
            );
            return send(w, id, fail(body), max).await;
        }
        Err(e) => {
            let body = ErrorBody::io(&root.display().to_string(), &e);
            return send(w, id, fail(body), max).await;
        }
    }
    let mut watches = match Watches::new(&root, req.recursive) {
        Ok(w) => w,
        Err(e) => return send(w, id, fail(e), max).await,
    };
    send(w, id, Outcome::Event(StreamEvent::Watching), max).await?;
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            // The host closing its side ends the watch.
            _ = r.read(&mut probe) => return Ok(()),
            () = tokio::time::sleep(KEEPALIVE) => {
                send(w, id, Outcome::Event(StreamEvent::Keepalive), max).await?;
            }
            got = watches.next() => {
                let events = match got {
                    Ok(events) => events,
                    Err(e) => return send(w, id, fail(ErrorBody::io("inotify", &e)), max).await,
                };
                let step = match translate(&mut watches, events) {
                    Ok(step) => step,
                    Err(e) => return send(w, id, fail(e), max).await,
                };
                let (events, gone) = match step {
                    Step::Events(e) => (e, false),
                    Step::RootGone(e) => (e, true),
                };
                for (name, op) in events {
                    send(w, id, Outcome::Event(StreamEvent::Fs { name, op }), max).await?;
                }
                if gone {
                    return send(w, id, Outcome::Ok(Response::Done), max).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_can_mean_several_changes_in_a_fixed_order() {
        assert_eq!(ops_of(F::IN_CREATE | F::IN_ISDIR), vec![FsOp::Create]);
        assert_eq!(
            ops_of(F::IN_MODIFY | F::IN_ATTRIB | F::IN_MOVED_FROM),
            vec![FsOp::Rename, FsOp::Chmod, FsOp::Write]
        );
        assert_eq!(ops_of(F::IN_MOVED_TO), vec![FsOp::Create]);
        assert_eq!(ops_of(F::IN_DELETE), vec![FsOp::Remove]);
        assert!(ops_of(F::IN_CLOSE_WRITE).is_empty());
    }
}
