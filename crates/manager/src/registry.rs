//! The in-memory table of sandboxes, the per-workspace locks, vsock CIDs,
//! and admission against the capacity limits (sandbox count and memory
//! budget), all behind one short-lived std mutex so that concurrent creates
//! and resumes cannot overshoot.

use crate::sandbox::{holds_vm, lock, Sandbox};
use crate::{ManagerError, Result, SandboxStatus};
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::debug;

/// Smallest vsock context id a guest may have (0–2 are reserved).
const FIRST_CID: u32 = 3;

/// How long a caller refused for capacity is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What [`Registry::admit`] admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new sandbox: it gets a free CID and enters the table.
    New,
    /// A paused sandbox: it turns `resuming`.
    Resume,
}

/// Capacity limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityLimits {
    /// Most sandboxes holding a VM.
    pub max_sandboxes: u32,
    /// Guest RAM budget over all of them, MiB.
    pub memory_budget_mb: u64,
    /// Admit against [`Usage::measured_mb`] instead of the nominal sum.
    pub overcommit: bool,
}

/// What one owner (an API key) may hold; 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerQuota {
    /// Most sandboxes the owner may have in any state (running, paused or
    /// dead: each holds a disk until destroyed).
    pub max_sandboxes: u32,
    /// Most guest RAM over the owner's sandboxes that hold a VM, MiB.
    pub max_memory_mb: u64,
}

/// Where admission reads an owner's quota from (the server's API keys,
/// which may change while it runs). Called under the registry's lock:
/// it must not call back into the manager.
pub trait QuotaSource: Send + Sync + std::fmt::Debug {
    /// The quota of `owner`; `None` = no limit.
    fn quota(&self, owner: &str) -> Option<OwnerQuota>;
}

/// Counts over the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Sandboxes holding a VM.
    pub active: u32,
    /// Paused sandboxes.
    pub paused: u32,
    /// Guest RAM of the active ones, MiB.
    pub memory_mb: u64,
    /// What the active ones measurably cost the host, MiB: each VMM's last
    /// PSS sample (shared pages counted once over all), or its nominal
    /// guest RAM until it has been sampled.
    pub measured_mb: u64,
}

impl Usage {
    /// The memory admission counts: measured with `overcommit`, else
    /// nominal.
    pub fn counted_mb(&self, overcommit: bool) -> u64 {
        if overcommit {
            self.measured_mb
        } else {
            self.memory_mb
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    sandboxes: HashMap<SandboxId, Arc<Sandbox>>,
    workspace_locks: HashMap<WorkspaceId, Arc<tokio::sync::Mutex<()>>>,
    next_cid: u32,
}

/// Every sandbox the manager knows.
#[derive(Debug)]
pub struct Registry {
    table: Mutex<Table>,
    limits: CapacityLimits,
    quotas: std::sync::RwLock<Option<Arc<dyn QuotaSource>>>,
}

impl Registry {
    /// An empty registry enforcing `limits`.
    pub fn new(limits: CapacityLimits) -> Self {
        Self {
            table: Mutex::new(Table {
                next_cid: FIRST_CID,
                ..Table::default()
            }),
            limits,
            quotas: std::sync::RwLock::new(None),
        }
    }

    /// Enforces the owners' quotas of `source` from now on.
    pub fn set_quota_source(&self, source: Arc<dyn QuotaSource>) {
        *self
            .quotas
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
    }

    /// The limits enforced.
    pub fn limits(&self) -> CapacityLimits {
        self.limits
    }

    /// One sandbox, if known.
    pub fn get(&self, id: &SandboxId) -> Option<Arc<Sandbox>> {
        lock(&self.table).sandboxes.get(id).cloned()
    }

    /// One sandbox.
    ///
    /// # Errors
    /// NotFound.
    pub fn require(&self, id: &SandboxId) -> Result<Arc<Sandbox>> {
        self.get(id).ok_or_else(|| ManagerError::NotFound {
            kind: "sandbox",
            id: id.to_string(),
        })
    }

    /// Whether `id` is (still) in the table.
    pub fn contains(&self, id: &SandboxId) -> bool {
        lock(&self.table).sandboxes.contains_key(id)
    }

    /// Every sandbox.
    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        lock(&self.table).sandboxes.values().cloned().collect()
    }

    /// Adds a sandbox found on disk at start (its CID is kept).
    pub fn insert_recovered(&self, sb: Arc<Sandbox>) {
        let cid = sb.record().guest_cid;
        let mut t = lock(&self.table);
        t.next_cid = t.next_cid.max(cid.saturating_add(1));
        t.sandboxes.insert(sb.id.clone(), sb);
    }

    /// Removes a sandbox.
    pub fn remove(&self, id: &SandboxId) {
        lock(&self.table).sandboxes.remove(id);
    }

    /// The lock serialising creates and deletes of one workspace.
    pub fn workspace_lock(&self, id: &WorkspaceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.table)
            .workspace_locks
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// Forgets a workspace's lock (the workspace is gone).
    pub fn forget_workspace(&self, id: &WorkspaceId) {
        lock(&self.table).workspace_locks.remove(id);
    }

    /// Current usage.
    pub fn usage(&self) -> Usage {
        let table = lock(&self.table);
        usage_of(table.sandboxes.values().map(|s| s.as_ref()), None)
    }

    /// The quota check of [`Self::admit`] for a new sandbox of `owner`
    /// asking for `memory_mb`, without admitting anything: create runs it
    /// before any expensive work (disk space, template snapshots), so a
    /// key at its quota is refused without making the host boot a VM.
    /// `admit` checks again, atomically, when the sandbox is admitted.
    ///
    /// # Errors
    /// QuotaExceeded naming the limit.
    pub fn precheck_quota(&self, owner: Option<&str>, memory_mb: u32) -> Result<()> {
        let table = lock(&self.table);
        self.check_quota(&table, owner, memory_mb, None, Admission::New)
    }

    /// Admits `sb` against both limits in one step under the table lock.
    ///
    /// # Errors
    /// AtCapacity naming the limit hit.
    pub fn admit(&self, sb: &Arc<Sandbox>, how: Admission) -> Result<()> {
        let mut table = lock(&self.table);
        let used = usage_of(table.sandboxes.values().map(|s| s.as_ref()), Some(&sb.id));
        let r = sb.record();
        let memory_mb = r.memory_mb;
        self.check_quota(&table, r.owner.as_deref(), memory_mb, Some(&sb.id), how)?;
        if used.active >= self.limits.max_sandboxes {
            return Err(ManagerError::AtCapacity {
                reason: format!(
                    "at capacity: {} of {} sandboxes running; destroy or pause one, or retry later",
                    used.active, self.limits.max_sandboxes
                ),
                retry_after: RETRY_AFTER,
            });
        }
        let counted = used.counted_mb(self.limits.overcommit);
        if counted + u64::from(memory_mb) > self.limits.memory_budget_mb {
            let what = if self.limits.overcommit {
                "measured (PSS of the running VMMs)"
            } else {
                "of guest RAM"
            };
            return Err(ManagerError::AtCapacity {
                reason: format!(
                    "memory budget exhausted: {counted} MiB {what} of {} MiB in use, {memory_mb} MiB requested",
                    self.limits.memory_budget_mb
                ),
                retry_after: RETRY_AFTER,
            });
        }
        match how {
            Admission::New => {
                let cids: Vec<u32> = table
                    .sandboxes
                    .values()
                    .map(|o| o.record().guest_cid)
                    .collect();
                let mut cid = table.next_cid.max(FIRST_CID);
                while cids.contains(&cid) {
                    cid = cid.wrapping_add(1).max(FIRST_CID);
                }
                table.next_cid = cid.wrapping_add(1).max(FIRST_CID);
                sb.edit(|r| r.guest_cid = cid);
                table.sandboxes.insert(sb.id.clone(), sb.clone());
                debug!(sandbox_id = %sb.id, cid, "admitted");
            }
            Admission::Resume => sb.edit(|r| {
                r.status = SandboxStatus::Resuming;
                r.error = None;
                r.updated_at = crate::store::now_rfc3339();
            }),
        }
        Ok(())
    }
}

impl Registry {
    /// The owner's quota, checked before the host's capacity so that a
    /// key over its quota never makes another key's sandbox be evicted.
    fn check_quota(
        &self,
        table: &Table,
        owner: Option<&str>,
        memory_mb: u32,
        except: Option<&SandboxId>,
        how: Admission,
    ) -> Result<()> {
        let Some(owner) = owner else {
            return Ok(());
        };
        let source = self
            .quotas
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(quota) = source.and_then(|s| s.quota(owner)) else {
            return Ok(());
        };
        let mut count = 0u32;
        let mut memory = 0u64;
        for other in table.sandboxes.values().filter(|o| Some(&o.id) != except) {
            let o = other.record();
            if o.owner.as_deref() != Some(owner) {
                continue;
            }
            count += 1;
            if holds_vm(o.status) {
                memory += u64::from(o.memory_mb);
            }
        }
        if how == Admission::New && quota.max_sandboxes > 0 && count >= quota.max_sandboxes {
            return Err(ManagerError::QuotaExceeded(format!(
                "API key {owner:?} is at its quota max_sandboxes={}: it has {count} sandboxes (running, paused or dead); destroy one, or have the operator raise max_sandboxes in the keys file or LOCALE2B_KEY_MAX_SANDBOXES",
                quota.max_sandboxes
            )));
        }
        let asked = u64::from(memory_mb);
        if quota.max_memory_mb > 0 && memory + asked > quota.max_memory_mb {
            return Err(ManagerError::QuotaExceeded(format!(
                "API key {owner:?} is over its quota max_memory_mb={}: its running sandboxes have {memory} MiB and this one asks for {asked} MiB; pause or destroy one, or have the operator raise max_memory_mb in the keys file or LOCALE2B_KEY_MAX_MEMORY_MB",
                quota.max_memory_mb
            )));
        }
        Ok(())
    }
}

fn usage_of<'a>(all: impl Iterator<Item = &'a Sandbox>, except: Option<&SandboxId>) -> Usage {
    let mut u = Usage::default();
    for sb in all {
        if Some(&sb.id) == except {
            continue;
        }
        let r = sb.record();
        if holds_vm(r.status) {
            u.active += 1;
            u.memory_mb += u64::from(r.memory_mb);
            let sample = sb.usage();
            u.measured_mb += if sample.at.is_some() {
                sample.pss_mb
            } else {
                u64::from(r.memory_mb)
            };
        } else if r.status == SandboxStatus::Paused {
            u.paused += 1;
        }
    }
    u
}
