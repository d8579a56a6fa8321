//! [`Sandbox`]: one sandbox in memory — its record, its VM handle behind the
//! lifecycle lock, its agent client — and the rules of its status: which
//! state allows which operation, and the message when one does not.

use crate::store::{SandboxRecord, Store};
use crate::{ManagerError, Result, SandboxInfo, SandboxStatus};
use locale2b_agent_client::AgentClient;
use locale2b_protocol::SandboxId;
use locale2b_vmm::VmHandle;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Locks a std mutex, ignoring poisoning (the data are plain values that a
/// panicking holder cannot leave half-updated).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Statuses that hold a VM (and count against capacity).
pub fn holds_vm(s: SandboxStatus) -> bool {
    !matches!(s, SandboxStatus::Paused | SandboxStatus::Dead)
}

/// What a caller wants to do with a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Snapshot it and stop its VM.
    Pause,
    /// Restore it from its snapshot.
    Resume,
    /// Reach its guest (exec, files).
    Use,
    /// Attach a create that names its workspace to it.
    Attach,
}

/// What the status says the operation should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Carry on with the operation.
    Go,
    /// The sandbox is already where the operation leads (pause of a paused
    /// sandbox, resume of a running one, attach to a live one): answer its
    /// current state.
    AlreadyThere,
}

/// The one place that decides whether `status` allows `intent`, and says
/// why not.
///
/// # Errors
/// [`ManagerError::Conflict`] naming the state and what to do instead.
pub fn check(id: &SandboxId, status: SandboxStatus, intent: Intent) -> Result<Next> {
    use SandboxStatus as S;
    match (intent, status) {
        (Intent::Pause, S::Running)
        | (Intent::Resume, S::Paused)
        | (Intent::Use, S::Running)
        | (Intent::Attach, S::Paused) => Ok(Next::Go),
        (Intent::Pause, S::Paused) | (Intent::Resume, S::Running) => Ok(Next::AlreadyThere),
        (Intent::Attach, S::Dead) => Err(ManagerError::Conflict(format!(
            "the workspace is attached to sandbox {id}, which is dead; destroy it first (the workspace data is kept)"
        ))),
        (Intent::Attach, _) => Ok(Next::AlreadyThere),
        (intent, status) => {
            let what = match intent {
                Intent::Pause => "; only a running sandbox can be paused",
                Intent::Resume => "; only a paused sandbox can be resumed",
                _ => "",
            };
            let hint = match status {
                S::Paused => "; resume it first",
                S::Dead => "; destroy it and create a new one (the workspace data is kept)",
                _ => "; retry in a moment",
            };
            Err(ManagerError::Conflict(format!(
                "sandbox {id} is {status}{what}{hint}"
            )))
        }
    }
}

/// One sandbox. Status changes go through [`Sandbox::set_status`] and
/// [`Sandbox::update`], which persist the record.
#[derive(Debug)]
pub struct Sandbox {
    /// Its id.
    pub id: SandboxId,
    store: Store,
    record: Mutex<SandboxRecord>,
    /// Held by lifecycle operations (create, pause, resume, destroy), so two
    /// of them never interleave on one sandbox; holds the VM handle while
    /// a VM exists.
    pub lifecycle: tokio::sync::Mutex<Option<Box<dyn VmHandle>>>,
    client: Mutex<Option<AgentClient>>,
    last_used: Mutex<Instant>,
    /// Guest calls running now (see [`Sandbox::begin_call`]).
    calls: tokio::sync::watch::Sender<usize>,
    /// Bumped, with the reason, when a pause or destroy begins, so a call
    /// that fails afterwards can say why (see [`Sandbox::interrupted_since`]).
    interruptions: Mutex<(u64, &'static str)>,
    /// Set by a destroy that arrives while the sandbox is starting.
    doomed: tokio::sync::watch::Sender<bool>,
}

/// One guest call in flight; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard {
    calls: tokio::sync::watch::Sender<usize>,
    /// The interruption count when the call began.
    pub epoch: u64,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.calls.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Sandbox {
    /// A sandbox for `record`, with the VM and agent client it has (both
    /// `None` for a new or paused one).
    pub fn new(
        record: SandboxRecord,
        store: Store,
        vm: Option<Box<dyn VmHandle>>,
        client: Option<AgentClient>,
    ) -> Self {
        Self {
            id: record.sandbox_id.clone(),
            store,
            record: Mutex::new(record),
            lifecycle: tokio::sync::Mutex::new(vm),
            client: Mutex::new(client),
            last_used: Mutex::new(Instant::now()),
            calls: tokio::sync::watch::Sender::new(0),
            interruptions: Mutex::new((0, "")),
            doomed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Counts a guest call until the guard is dropped. Taken before the
    /// status check, so a pause or destroy that changed the status either
    /// refuses the call or waits for it.
    pub fn begin_call(&self) -> CallGuard {
        self.calls.send_modify(|n| *n += 1);
        CallGuard {
            calls: self.calls.clone(),
            epoch: lock(&self.interruptions).0,
        }
    }

    /// Records that a pause or destroy (`reason`: `"paused"`,
    /// `"destroyed"`) begins, then waits up to `within` for the calls
    /// running in the guest to end. Answers how many are still running.
    pub async fn settle(&self, reason: &'static str, within: std::time::Duration) -> usize {
        {
            let mut i = lock(&self.interruptions);
            *i = (i.0 + 1, reason);
        }
        let mut rx = self.calls.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        let left = *self.calls.borrow();
        left
    }

    /// Why the sandbox was interrupted after a call that began at `epoch`,
    /// if it was.
    pub fn interrupted_since(&self, epoch: u64) -> Option<&'static str> {
        let i = lock(&self.interruptions);
        (i.0 != epoch).then_some(i.1)
    }

    /// Marks a starting sandbox for destruction: its create gives up.
    pub fn doom(&self) {
        self.doomed.send_replace(true);
    }

    /// Whether a destroy arrived while it was starting.
    pub fn is_doomed(&self) -> bool {
        *self.doomed.borrow()
    }

    /// Resolves once [`Sandbox::doom`] was called.
    pub async fn doomed(&self) {
        let mut rx = self.doomed.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// A copy of the record.
    pub fn record(&self) -> SandboxRecord {
        lock(&self.record).clone()
    }

    /// Current status.
    pub fn status(&self) -> SandboxStatus {
        lock(&self.record).status
    }

    /// Whether the status allows `intent` (see [`check`]).
    ///
    /// # Errors
    /// As [`check`].
    pub fn check(&self, intent: Intent) -> Result<Next> {
        check(&self.id, self.status(), intent)
    }

    /// Changes the record in memory only (for fields set before the first
    /// persist, under the table lock).
    pub fn edit<T>(&self, f: impl FnOnce(&mut SandboxRecord) -> T) -> T {
        f(&mut lock(&self.record))
    }

    /// Changes the record and persists it.
    pub fn update(&self, f: impl FnOnce(&mut SandboxRecord)) {
        let snapshot = {
            let mut r = lock(&self.record);
            f(&mut r);
            r.updated_at = crate::store::now_rfc3339();
            r.clone()
        };
        let _ = self.store.write_sandbox(&snapshot);
    }

    /// Persists the record as it is.
    pub fn persist(&self) {
        let _ = self.store.write_sandbox(&self.record());
    }

    /// Moves to `status` (with `error` as the reason, or none) and persists.
    pub fn set_status(&self, status: SandboxStatus, error: Option<String>) {
        self.update(|r| {
            r.status = status;
            r.error = error;
        });
    }

    /// The public view.
    pub fn info(&self) -> SandboxInfo {
        let r = lock(&self.record);
        SandboxInfo {
            sandbox_id: r.sandbox_id.clone(),
            workspace_id: r.workspace_id.clone(),
            status: r.status,
            memory_mb: r.memory_mb,
            vcpu_count: r.vcpu_count,
            template: r.template.clone(),
            backend: r.backend,
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            error: r.error.clone(),
            boot_ms: r.boot_ms,
            end_at: r.end_at.clone(),
            timeout_sec: r.timeout_sec,
            on_timeout: r.on_timeout,
            metadata: r.metadata.clone(),
            access_token: r.access_token.clone().map(crate::Secret::new),
        }
    }

    /// The agent client, when the guest is up.
    pub fn client(&self) -> Option<AgentClient> {
        lock(&self.client).clone()
    }

    /// Sets the agent client (the guest answered).
    pub fn set_client(&self, client: AgentClient) {
        *lock(&self.client) = Some(client);
    }

    /// Drops the agent client, invalidating its pooled connections (the
    /// guest is going away).
    pub fn drop_client(&self) -> Option<AgentClient> {
        let client = lock(&self.client).take();
        if let Some(c) = &client {
            c.invalidate();
        }
        client
    }

    /// Records API activity.
    pub fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    /// Time of the last API activity.
    pub fn last_used(&self) -> Instant {
        *lock(&self.last_used)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use SandboxStatus as S;

    #[test]
    fn transitions_allowed_and_refused() {
        let id: SandboxId = "sb-t".parse().unwrap();
        assert_eq!(check(&id, S::Running, Intent::Pause).unwrap(), Next::Go);
        assert_eq!(
            check(&id, S::Paused, Intent::Pause).unwrap(),
            Next::AlreadyThere
        );
        assert_eq!(check(&id, S::Paused, Intent::Resume).unwrap(), Next::Go);
        assert_eq!(
            check(&id, S::Running, Intent::Resume).unwrap(),
            Next::AlreadyThere
        );
        assert_eq!(check(&id, S::Running, Intent::Use).unwrap(), Next::Go);
        assert_eq!(check(&id, S::Paused, Intent::Attach).unwrap(), Next::Go);
        assert_eq!(
            check(&id, S::Starting, Intent::Attach).unwrap(),
            Next::AlreadyThere
        );
        for (status, intent, needle) in [
            (S::Paused, Intent::Use, "resume it first"),
            (S::Dead, Intent::Use, "destroy it"),
            (S::Starting, Intent::Use, "retry in a moment"),
            (
                S::Stopping,
                Intent::Pause,
                "only a running sandbox can be paused",
            ),
            (
                S::Dead,
                Intent::Resume,
                "only a paused sandbox can be resumed",
            ),
            (S::Dead, Intent::Attach, "destroy it first"),
        ] {
            let err = check(&id, status, intent).unwrap_err();
            assert!(
                matches!(&err, ManagerError::Conflict(m) if m.contains(needle)),
                "{status} {intent:?}: {err}"
            );
        }
    }
}
