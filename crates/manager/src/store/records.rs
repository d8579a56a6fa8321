//! The records kept on disk: `state.json` of a sandbox and `workspace.json`
//! of a workspace. Their field names are a file format: add fields with
//! `#[serde(default)]`, never rename one.

use crate::{LineageEvent, OnTimeout, SandboxStatus};
use locale2b_protocol::{SandboxId, WorkspaceId};
use locale2b_vmm::{VmProcess, VmmKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format version written into new records.
pub const RECORD_FORMAT: u32 = 1;

/// Most lineage events kept per workspace (oldest dropped first).
pub const MAX_LINEAGE: usize = 1000;

/// What `sandboxes/<id>/state.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`RECORD_FORMAT`] of the writer.
    pub format: u32,
    /// The sandbox.
    pub sandbox_id: SandboxId,
    /// The workspace it runs.
    pub workspace_id: WorkspaceId,
    /// Template (image) name.
    pub template: String,
    /// Guest RAM.
    pub memory_mb: u32,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Backend running it.
    pub backend: VmmKind,
    /// vsock context id of the guest.
    pub guest_cid: u32,
    /// Lifecycle state.
    pub status: SandboxStatus,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Time of the last change, RFC 3339.
    pub updated_at: String,
    /// Why the sandbox is dead (or why the last resume failed).
    #[serde(default)]
    pub error: Option<String>,
    /// The VMM process while one exists.
    #[serde(default)]
    pub process: Option<VmProcess>,
    /// Milliseconds from create request to agent ready (or restore time).
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// Environment for every command in the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// End of the lifetime (RFC 3339, milliseconds) while running.
    #[serde(default)]
    pub end_at: Option<String>,
    /// Lifetime applied at create and at every resume, seconds.
    #[serde(default)]
    pub timeout_sec: Option<u64>,
    /// What the end of the lifetime does.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Caller's labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Secret for direct guest access (see `CreateSandbox::access_token`).
    #[serde(default)]
    pub access_token: Option<String>,
    /// The complete snapshot a pause in progress wrote (set before the VMM
    /// is stopped). A restart that finds the sandbox `pausing` with its
    /// VMM gone completes the pause from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshot: Option<String>,
    /// Idle timeout the create asked for (`Some(0)` = never idle-paused);
    /// the configured `idle_timeout_sec` when `None`.
    #[serde(default)]
    pub idle_timeout_sec: Option<u64>,
    /// Whether a call to the paused sandbox resumes it first.
    #[serde(default)]
    pub auto_resume: bool,
    /// When it was last paused (RFC 3339), while paused: the start of its
    /// retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
    /// Why it was last paused: `api`, `timeout`, `idle` or `eviction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// Size of its workspace's writable disk, MiB (a copy of the
    /// workspace's).
    #[serde(default)]
    pub disk_size_mb: Option<u64>,
    /// How its guest was started at create: `cold` or `template` (cloned
    /// from a template snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::BootSource>,
    /// The sandbox it was forked from, for a fork child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<SandboxId>,
    /// See [`crate::CreateSandbox::owner`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its exposed ports (their listeners are bound again after a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<crate::ExposedPort>,
    /// Its egress policy (mode `none`: no NIC).
    #[serde(default)]
    pub network: crate::network::NetworkPolicy,
    /// The slot of the network pool its veth pair uses (networked only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_slot: Option<u32>,
    /// See `CreateSandbox::route_all_ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_all_ports: Option<crate::RouteAllPorts>,
}

/// What `workspaces/<id>/workspace.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// [`RECORD_FORMAT`] of the writer.
    pub format: u32,
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Template its disk was made for.
    pub template: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Generated id (the caller did not name it): data is removed with the sandbox.
    pub ephemeral: bool,
    /// Sandbox attached (running or paused), if any.
    #[serde(default)]
    pub sandbox_id: Option<SandboxId>,
    /// Latest complete snapshot, if any.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Size of its writable disk, MiB (`None` in records written before
    /// sizes were chosen per workspace).
    #[serde(default)]
    pub disk_size_mb: Option<u64>,
    /// History, oldest first, at most [`MAX_LINEAGE`] entries.
    #[serde(default)]
    pub lineage: Vec<LineageEvent>,
    /// Name of the API key that created it (`None`: made before owners
    /// were recorded, or by an embedding without keys; any key sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl WorkspaceRecord {
    /// A new workspace with no sandbox, snapshot or history.
    pub fn new(
        workspace_id: WorkspaceId,
        template: &str,
        ephemeral: bool,
        disk_size_mb: u64,
    ) -> Self {
        Self {
            format: RECORD_FORMAT,
            workspace_id,
            template: template.to_owned(),
            created_at: super::now_rfc3339(),
            ephemeral,
            sandbox_id: None,
            snapshot_id: None,
            disk_size_mb: Some(disk_size_mb),
            lineage: Vec::new(),
            owner: None,
        }
    }

    /// Appends a lineage event (dropping the oldest beyond [`MAX_LINEAGE`]).
    pub fn push_lineage(
        &mut self,
        event: &str,
        sandbox: Option<&SandboxId>,
        snapshot: Option<&str>,
        detail: Option<String>,
    ) {
        self.lineage.push(LineageEvent {
            at: super::now_rfc3339(),
            event: event.to_owned(),
            sandbox_id: sandbox.cloned(),
            snapshot_id: snapshot.map(str::to_owned),
            detail,
        });
        if self.lineage.len() > MAX_LINEAGE {
            let excess = self.lineage.len() - MAX_LINEAGE;
            self.lineage.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lineage_is_bounded() {
        let mut ws = WorkspaceRecord::new("w".parse().unwrap(), "default", false, 64);
        for i in 0..MAX_LINEAGE + 5 {
            ws.push_lineage("paused", None, Some(&format!("s{i}")), None);
        }
        assert_eq!(ws.lineage.len(), MAX_LINEAGE);
        assert_eq!(ws.lineage[0].snapshot_id.as_deref(), Some("s5"));
    }

    #[test]
    fn old_records_without_optional_fields_load() {
        let json = r#"{"format":1,"sandbox_id":"sb-a","workspace_id":"ws-a","template":"default",
            "memory_mb":256,"vcpu_count":1,"backend":"qemu","guest_cid":3,"status":"paused",
            "created_at":"t","updated_at":"t"}"#;
        let r: SandboxRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.status, SandboxStatus::Paused);
        assert!(r.process.is_none() && r.env.is_empty());
    }
}
