//! The registry of child processes the agent waits for itself, so the
//! init-mode reaper leaves their exit status to their waiter.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

/// Pids of the children `exec` is waiting for. The init-mode reaper only
/// reaps zombies that are *not* in this set, so it never steals an exit
/// status `exec` needs. Registration happens under the same lock as the
/// spawn, so a child cannot exit unregistered.
#[derive(Debug, Default)]
pub struct ChildRegistry {
    pids: Mutex<HashSet<i32>>,
}

impl ChildRegistry {
    /// Locks the set (the reaper holds this while it reaps).
    pub fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn spawn(
        &self,
        cmd: &mut tokio::process::Command,
    ) -> std::io::Result<tokio::process::Child> {
        let mut pids = self.lock();
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            pids.insert(pid as i32);
        }
        Ok(child)
    }

    pub(crate) fn remove(&self, pid: i32) {
        self.lock().remove(&pid);
    }
}
