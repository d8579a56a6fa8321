//! [`SandboxService`] for [`SandboxManager`]: the trait the HTTP layer holds.

use super::SandboxManager;
use crate::service::{GuestOps, SandboxService};
use crate::{Capacity, CreateSandbox, Limits, Result, SandboxInfo, WorkspaceInfo};
use async_trait::async_trait;
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::sync::Arc;

#[async_trait]
impl SandboxService for SandboxManager {
    async fn create(&self, req: CreateSandbox) -> Result<SandboxInfo> {
        SandboxManager::create(self, req).await
    }
    async fn get(&self, id: &SandboxId) -> Result<SandboxInfo> {
        SandboxManager::get(self, id).await
    }
    async fn list(&self) -> Vec<SandboxInfo> {
        SandboxManager::list(self).await
    }
    async fn destroy(&self, id: &SandboxId) -> Result<()> {
        SandboxManager::destroy(self, id).await
    }
    async fn pause(&self, id: &SandboxId) -> Result<SandboxInfo> {
        SandboxManager::pause(self, id).await
    }
    async fn resume(&self, id: &SandboxId) -> Result<SandboxInfo> {
        SandboxManager::resume(self, id).await
    }
    async fn fork(&self, id: &SandboxId, count: u32) -> Result<Vec<SandboxInfo>> {
        SandboxManager::fork(self, id, count).await
    }
    async fn set_timeout(&self, id: &SandboxId, timeout_sec: u64) -> Result<SandboxInfo> {
        SandboxManager::set_timeout(self, id, timeout_sec).await
    }
    async fn capacity(&self) -> Capacity {
        SandboxManager::capacity(self).await
    }
    fn limits(&self) -> Limits {
        SandboxManager::limits(self)
    }
    fn metrics_text(&self) -> String {
        SandboxManager::metrics_text(self)
    }
    fn set_quota_source(&self, source: Arc<dyn crate::registry::QuotaSource>) {
        self.registry.set_quota_source(source);
    }
    async fn sandbox_metrics(&self, id: &SandboxId) -> Result<crate::SandboxMetrics> {
        SandboxManager::sandbox_metrics(self, id).await
    }
    fn guest(&self, id: &SandboxId) -> Arc<dyn GuestOps> {
        Arc::new(SandboxManager::guest(self, id))
    }
    async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        SandboxManager::list_workspaces(self).await
    }
    async fn get_workspace(&self, id: &WorkspaceId) -> Result<WorkspaceInfo> {
        SandboxManager::get_workspace(self, id).await
    }
    async fn delete_workspace(&self, id: &WorkspaceId) -> Result<()> {
        SandboxManager::delete_workspace(self, id).await
    }
    async fn expose_port(
        &self,
        id: &SandboxId,
        port: u16,
        protect: bool,
    ) -> Result<(crate::ExposedPort, bool)> {
        SandboxManager::expose_port(self, id, port, protect).await
    }
    async fn list_ports(&self, id: &SandboxId) -> Result<Vec<crate::ExposedPort>> {
        SandboxManager::list_ports(self, id)
    }
    async fn port_route(&self, id: &SandboxId, port: u16) -> Result<crate::PortRoute> {
        SandboxManager::port_route(self, id, port)
    }
    async fn close_port(&self, id: &SandboxId, port: u16) -> Result<()> {
        SandboxManager::close_port(self, id, port).await
    }
    async fn set_network(
        &self,
        id: &SandboxId,
        policy: crate::network::NetworkPolicy,
    ) -> Result<SandboxInfo> {
        SandboxManager::set_network(self, id, policy).await
    }
}
