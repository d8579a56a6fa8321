//! Changing a sandbox's egress policy.

use super::SandboxManager;
use crate::network::NetworkPolicy;
use crate::{ManagerError, Result, SandboxInfo, SandboxStatus};
use locale2b_protocol::SandboxId;
use tracing::info;

impl SandboxManager {
    /// Gives sandbox `id` egress policy `policy`. A running sandbox's
    /// rules and resolver change at once (connections already open stay);
    /// a paused one gets them at its resume.
    ///
    /// # Errors
    /// InvalidInput naming a bad entry; Conflict for a sandbox created
    /// without a network (its VM has no NIC: create a new one with a
    /// policy) or one being destroyed; NetworkUnavailable when this host
    /// cannot make networks; Vm when the rules cannot be applied.
    pub async fn set_network(&self, id: &SandboxId, policy: NetworkPolicy) -> Result<SandboxInfo> {
        policy.compile().map_err(ManagerError::InvalidInput)?;
        let sb = self.registry.require(id)?;
        let _lifecycle = sb.lifecycle.lock().await;
        self.still_registered(id)?;
        let record = sb.record();
        if record.net_slot.is_none() {
            if !policy.networked() {
                return Ok(sb.info());
            }
            return Err(ManagerError::Conflict(format!(
                "sandbox {id} was created without a network, so its VM has no network device; create a sandbox with a network policy (mode \"allowlist\" or \"full\") instead"
            )));
        }
        self.networks
            .check_available()
            .map_err(ManagerError::NetworkUnavailable)?;
        match sb.status() {
            SandboxStatus::Stopping | SandboxStatus::Dead => {
                return Err(ManagerError::Conflict(format!(
                    "sandbox {id} is {}; its network cannot be changed",
                    sb.status()
                )))
            }
            SandboxStatus::Running => {
                self.networks
                    .apply(id, &policy)
                    .await
                    .map_err(|e| ManagerError::Vm {
                        message: format!("cannot apply the network policy of sandbox {id}: {e}"),
                        source: None,
                    })?;
            }
            _ => {}
        }
        sb.update(|r| r.network = policy.clone());
        info!(sandbox_id = %id, mode = %policy.mode, "network policy set");
        Ok(sb.info())
    }
}
