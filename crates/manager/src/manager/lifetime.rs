//! Lifetimes: a running sandbox may have an end time. When it passes, the
//! sandbox is destroyed or paused, as its `on_timeout` says. The end is set
//! at create and at every resume (`timeout_sec` from then), moved by
//! [`SandboxManager::set_timeout`], and cleared while the sandbox is paused
//! (a paused sandbox holds no VM; it waits for a resume or a destroy).
//!
//! One task ([`lifetime_loop`]) sleeps until the earliest end among the
//! running sandboxes, or until a lifetime changes, so a sandbox ends within
//! moments of its end time. Ends that passed while the server was down are
//! acted on at start-up.
//!
//! The same task pauses a running sandbox once it has been idle (no guest
//! call, no attached stream, no API activity) for its idle timeout.

use super::SandboxManager;
use crate::sandbox::lock;
use crate::store::SandboxRecord;
use crate::{ManagerError, OnTimeout, Result, SandboxInfo, SandboxStatus};
use locale2b_protocol::SandboxId;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Longest sleep of the lifetime task between looks at the table.
const MAX_NAP: Duration = Duration::from_secs(60);
/// When a pause at the end of a lifetime fails, the sandbox keeps running
/// and the pause is tried again this much later (nothing is destroyed).
const PAUSE_RETRY: Duration = Duration::from_secs(60);

/// `at` as RFC 3339 with milliseconds (UTC).
pub(crate) fn rfc3339_ms(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The end time of a lifetime of `timeout_sec` starting now.
pub(crate) fn end_after(timeout_sec: Option<u64>) -> Option<String> {
    timeout_sec.map(|t| rfc3339_ms(SystemTime::now() + Duration::from_secs(t)))
}

/// The record's end time, if it has a readable one.
fn end_of(r: &SandboxRecord) -> Option<SystemTime> {
    r.end_at
        .as_deref()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
}

/// Whether the record's lifetime has ended (running, with an end in the past).
fn expired(r: &SandboxRecord, now: SystemTime) -> bool {
    r.status == SandboxStatus::Running && end_of(r).is_some_and(|end| end <= now)
}

impl SandboxManager {
    /// The lifetime a create or timeout change asks for: `None` = no end.
    ///
    /// # Errors
    /// InvalidInput above `max_sandbox_timeout_sec`.
    pub(super) fn lifetime(&self, asked: Option<u64>) -> Result<Option<u64>> {
        let t = asked.unwrap_or(self.config.sandbox_timeout_sec);
        let max = self.config.max_sandbox_timeout_sec;
        if t > max {
            return Err(ManagerError::InvalidInput(format!(
                "timeout of {t} s is longer than the allowed maximum of {max} s (max_sandbox_timeout_sec)"
            )));
        }
        Ok((t > 0).then_some(t))
    }

    /// Sets a sandbox's lifetime to `timeout_sec` from now (0 = no end). On
    /// a paused sandbox it is kept for the next resume.
    ///
    /// # Errors
    /// NotFound; InvalidInput above the maximum; Conflict while the sandbox
    /// is changing state or dead.
    pub async fn set_timeout(&self, id: &SandboxId, timeout_sec: u64) -> Result<SandboxInfo> {
        let lifetime = self.lifetime(Some(timeout_sec))?;
        let sb = self.registry.require(id)?;
        match sb.status() {
            SandboxStatus::Running => sb.update(|r| {
                r.timeout_sec = lifetime;
                r.end_at = end_after(lifetime);
            }),
            SandboxStatus::Paused => sb.update(|r| r.timeout_sec = lifetime),
            status => {
                return Err(ManagerError::Conflict(format!(
                    "sandbox {id} is {status}; its timeout can be set while it is running or paused"
                )))
            }
        }
        info!(sandbox_id = %id, timeout_sec, "sandbox timeout set");
        self.lifetimes.notify_one();
        Ok(sb.info())
    }

    /// Acts on one ended lifetime. The end is checked again under the
    /// sandbox's lifecycle lock, so a timeout extended meanwhile wins.
    async fn expire(self: Arc<Self>, id: SandboxId) {
        let Some(sb) = self.registry.get(&id) else {
            return;
        };
        let policy = sb.record().on_timeout;
        if expired(&sb.record(), SystemTime::now()) {
            crate::metrics::inc(&self.metrics.timeouts);
        }
        let still_expired = |r: &SandboxRecord| expired(r, SystemTime::now());
        match policy {
            OnTimeout::Destroy => match self.destroy_when(&id, still_expired).await {
                Ok(true) => info!(sandbox_id = %id, "sandbox lifetime ended; destroyed"),
                Ok(false) => {}
                Err(e) => {
                    warn!(sandbox_id = %id, error = %crate::error::chain(&e), "destroy at the end of the lifetime failed")
                }
            },
            OnTimeout::Pause => match self
                .pause_when(&id, crate::metrics::PauseReason::Timeout, still_expired)
                .await
            {
                Ok(Some(_)) => info!(sandbox_id = %id, "sandbox lifetime ended; paused"),
                Ok(None) => {}
                Err(e) => {
                    warn!(sandbox_id = %id, error = %crate::error::chain(&e), retry_sec = PAUSE_RETRY.as_secs(), "pause at the end of the lifetime failed; the sandbox keeps running");
                    if let Some(sb) = self.registry.get(&id) {
                        sb.update(|r| {
                            if r.status == SandboxStatus::Running {
                                r.end_at = Some(rfc3339_ms(SystemTime::now() + PAUSE_RETRY));
                            }
                        });
                    }
                }
            },
        }
        lock(&self.expiring).remove(&id);
        self.lifetimes.notify_one();
    }
}

/// Ends lifetimes as they pass and pauses idle sandboxes (see the module
/// docs). Holds the manager only while looking at the table, so it stops
/// when the manager is dropped.
pub(super) async fn lifetime_loop(manager: Weak<SandboxManager>) {
    loop {
        let Some(m) = manager.upgrade() else { return };
        let now = SystemTime::now();
        let mut nap = MAX_NAP;
        for sb in m.registry.all() {
            let r = sb.record();
            if r.status != SandboxStatus::Running {
                continue;
            }
            if let Some(end) = end_of(&r) {
                match end.duration_since(now) {
                    Ok(left) if !left.is_zero() => nap = nap.min(left),
                    _ => {
                        if lock(&m.expiring).insert(r.sandbox_id.clone()) {
                            tokio::spawn(m.clone().expire(r.sandbox_id.clone()));
                        }
                        continue;
                    }
                }
            }
            if let Some(idle) = m.idle_timeout_of(&r) {
                if sb.in_use() {
                    // Looked at again one idle period later (a stream that
                    // ends counts as activity then).
                    nap = nap.min(idle);
                } else {
                    let quiet = sb.last_used().elapsed();
                    if quiet >= idle {
                        if lock(&m.expiring).insert(r.sandbox_id.clone()) {
                            tokio::spawn(m.clone().idle_pause(r.sandbox_id.clone()));
                        }
                    } else {
                        nap = nap.min(idle - quiet);
                    }
                }
            }
        }
        let nap = nap.max(Duration::from_millis(10));
        let wake = m.lifetimes.clone();
        drop(m);
        tokio::select! {
            () = tokio::time::sleep(nap) => {}
            () = wake.notified() => {}
        }
    }
}
