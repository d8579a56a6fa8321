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
    usage: Mutex<UsageSample>,
    /// Guest calls running now (see [`Sandbox::begin_call`]).
    calls: tokio::sync::watch::Sender<usize>,
    /// Streams handed to callers and still open (output follows, file
    /// watches, downloads): the sandbox is in use while one is.
    attached: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Bumped, with the reason, when a pause or destroy begins, so a call
    /// that fails afterwards can say why (see [`Sandbox::interrupted_since`]).
    interruptions: Mutex<(u64, &'static str)>,
    /// Set by a destroy that arrives while the sandbox is starting.
    doomed: tokio::sync::watch::Sender<bool>,
}

/// A sandbox's VMM use, sampled by the health check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageSample {
    /// When it was taken.
    pub at: Option<Instant>,
    /// CPU time of the VMM so far, clock ticks.
    pub ticks: u64,
    /// CPU use between the last two samples, percent of one core.
    pub cpu_pct: f64,
    /// Resident memory of the VMM, MiB.
    pub rss_mb: u64,
    /// Proportional set size of the VMM, MiB (pages shared with other
    /// VMMs, such as a template's memory, split between them).
    pub pss_mb: u64,
}

/// One stream attached to a sandbox; dropping it detaches (and counts as
/// activity, so the idle timeout runs from the end of the stream).
#[derive(Debug)]
pub struct AttachGuard {
    attached: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    sandbox: std::sync::Weak<Sandbox>,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        self.attached
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(sb) = self.sandbox.upgrade() {
            sb.touch();
        }
    }
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
            usage: Mutex::new(UsageSample::default()),
            calls: tokio::sync::watch::Sender::new(0),
            attached: std::sync::Arc::default(),
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

    /// Counts a stream as attached until the guard is dropped.
    pub fn attach(self: &std::sync::Arc<Self>) -> AttachGuard {
        self.attached
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        AttachGuard {
            attached: self.attached.clone(),
            sandbox: std::sync::Arc::downgrade(self),
        }
    }

    /// Whether a guest call is running or a stream is attached.
    pub fn in_use(&self) -> bool {
        *self.calls.borrow() > 0 || self.attached.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Guest calls running now.
    pub fn calls_in_flight(&self) -> usize {
        *self.calls.borrow()
    }

    /// Streams attached now.
    pub fn streams_attached(&self) -> usize {
        self.attached.load(std::sync::atomic::Ordering::SeqCst)
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
            idle_timeout_sec: r.idle_timeout_sec.filter(|t| *t > 0),
            auto_resume: r.auto_resume,
            paused_at: r.paused_at.clone(),
            paused_by: r.paused_by.clone(),
            disk_size_mb: r.disk_size_mb,
            boot: r.boot,
            forked_from: r.forked_from.clone(),
            owner: r.owner.clone(),
            access_token: r.access_token.clone().map(crate::Secret::new),
            network: r.network.clone(),
            route_all_ports: r.route_all_ports.clone(),
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

    /// Records a sample of the VMM's CPU time (`ticks` at `hz` per
    /// second), resident memory and PSS.
    pub fn sample_usage(&self, ticks: u64, rss_kb: u64, pss_kb: u64, hz: u64) {
        let now = Instant::now();
        let mut u = lock(&self.usage);
        let cpu_pct = match u.at {
            Some(at) if ticks >= u.ticks => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    (ticks - u.ticks) as f64 / hz as f64 / secs * 100.0
                } else {
                    u.cpu_pct
                }
            }
            _ => 0.0,
        };
        *u = UsageSample {
            at: Some(now),
            ticks,
            cpu_pct,
            rss_mb: rss_kb / 1024,
            pss_mb: pss_kb / 1024,
        };
    }

    /// The latest usage sample.
    pub fn usage(&self) -> UsageSample {
        *lock(&self.usage)
    }

    /// Forgets the usage samples (the VMM is gone).
    pub fn clear_usage(&self) {
        *lock(&self.usage) = UsageSample::default();
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
