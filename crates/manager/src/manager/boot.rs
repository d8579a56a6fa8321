//! Bringing a guest up, shared by create, resume and recovery: the VM spec
//! of a record, the agent client, waiting for the agent while watching the
//! VMM, and the `init` that gives the guest its identity.

use super::SandboxManager;
use crate::image::Image;
use crate::sandbox::Sandbox;
use crate::store::SandboxRecord;
use crate::{ManagerError, Result};
use locale2b_agent_client::{AgentClient, ClientConfig, ClientError};
use locale2b_protocol::InitRequest;
use locale2b_vmm::{VmHandle, VmSpec};
use std::path::PathBuf;
use std::time::Instant;

impl SandboxManager {
    pub(super) fn vm_spec(&self, r: &SandboxRecord, image: &Image) -> VmSpec {
        let layout = self.store.layout();
        VmSpec {
            // A sandbox created with a network keeps its NIC whatever its
            // policy becomes (a VM's devices are fixed).
            net: r
                .net_slot
                .map(|_| crate::network::Networks::vm_net(&r.sandbox_id)),
            ..image.vm_spec(
                &r.sandbox_id,
                layout.workspace_disk(&r.workspace_id),
                r.memory_mb,
                r.vcpu_count,
                layout.sandbox_dir(&r.sandbox_id),
                r.guest_cid,
            )
        }
    }

    pub(super) fn new_client(&self, vsock: Option<PathBuf>) -> AgentClient {
        let config = ClientConfig {
            max_frame: self.config.max_frame_bytes,
            ..ClientConfig::default()
        };
        AgentClient::new(vsock.unwrap_or_default(), config)
    }

    /// Waits for the agent's `ping`, watching the VMM so that a VM that dies
    /// during boot fails fast with its console tail instead of a timeout.
    pub(super) async fn wait_agent(
        &self,
        sb: &Sandbox,
        client: &AgentClient,
        vm: Option<&dyn VmHandle>,
    ) -> Result<()> {
        let timeout = self.config.boot_timeout();
        let deadline = Instant::now() + timeout;
        let ready = client.wait_ready(deadline);
        let exited = async {
            match vm {
                Some(vm) => vm.wait_exit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = ready => r.map(|_| ()).map_err(|e| match e {
                ClientError::NotReady { .. } => ManagerError::Timeout {
                    what: format!(
                        "waiting for the guest agent of sandbox {} (last console lines: {})",
                        sb.id,
                        self.store.console_tail(&sb.id, 5)
                    ),
                    after: timeout,
                },
                other => ManagerError::vm(format!("guest agent of sandbox {} is unusable", sb.id), other),
            }),
            reason = exited => Err(ManagerError::Vm {
                message: format!(
                    "VM of sandbox {} exited during boot ({reason}); last console lines: {}",
                    sb.id,
                    self.store.console_tail(&sb.id, 10)
                ),
                source: None,
            }),
        }
    }

    /// Sends `init`: sandbox id, hostname, wall clock, environment, entropy.
    pub(super) async fn init_guest(&self, sb: &Sandbox, client: &AgentClient) -> Result<()> {
        use base64::Engine as _;
        use rand::RngCore as _;
        let record = sb.record();
        let speaks_v2 = client
            .agent_info()
            .is_some_and(|h| h.protocol_version >= locale2b_protocol::STREAMS_PROTOCOL_VERSION);
        let mut entropy = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut entropy);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        client
            .init(InitRequest {
                sandbox_id: sb.id.to_string(),
                workspace_id: Some(record.workspace_id.to_string()),
                hostname: Some(sb.id.to_string()),
                unix_time_ms: Some(now_ms),
                env: record.env,
                entropy_b64: Some(base64::engine::general_purpose::STANDARD.encode(entropy)),
                // Only an agent that has a process table knows the field.
                process_retention_sec: speaks_v2.then_some(self.config.process_retention_sec),
                network: record
                    .net_slot
                    .map(|_| crate::network::Networks::guest_config()),
            })
            .await
            .map_err(|e| ManagerError::vm(format!("init of sandbox {} failed", sb.id), e))
    }

    /// Waits for the agent of a just started or restored VM, sends `init`
    /// and installs the client on the sandbox.
    pub(super) async fn bring_up(&self, sb: &Sandbox, vm: &dyn VmHandle) -> Result<()> {
        let client = self.new_client(Some(vm.vsock_path().to_path_buf()));
        self.wait_agent(sb, &client, Some(vm)).await?;
        self.init_guest(sb, &client).await?;
        sb.set_client(client);
        Ok(())
    }
}
