//! `locale2b serve`: probe the host, open the manager, serve the REST API.
//!
//! Stopping the server (SIGINT/SIGTERM) stops the HTTP listener only: VMs
//! keep running and a restarted server re-attaches to them.

use locale2b_config::Config;
use locale2b_manager::{backend, SandboxManager};
use locale2b_server::audit::AuditLog;
use locale2b_server::{load_or_create_api_keys, serve, AppState};
use std::sync::Arc;
use tracing::{info, warn};

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut server = config.server.clone();
    server.ui_dir = Some(config.ui_dir());
    let config_audit_path = config.audit_log();
    let manager_config = Arc::new(config.manager);
    let (vmm, report) = backend::build(&config.vmm, &manager_config).await?;
    let accel = backend::accel_name(&report);
    info!(backend = %report.chosen, accel = %accel, reason = %report.explanation(), "VMM backend chosen");
    let manager = SandboxManager::open(manager_config.clone(), vmm, accel).await?;
    let keys = load_or_create_api_keys(&server, &manager_config.base_dir)?;
    if let Some(path) = keys.stored_at() {
        info!(path = %path.display(), "API key stored in {}", path.display());
    }
    let listener = tokio::net::TcpListener::bind((server.host, server.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", server.host, server.port))?;
    let addr = listener.local_addr()?;
    info!(%addr, "locale2b listening on http://{addr} (Swagger UI at /docs)");
    let state = AppState::new(manager, keys, &server);
    let audit_path = config_audit_path;
    let audit = AuditLog::open(
        &audit_path,
        server.audit_log_max_mb.saturating_mul(1024 * 1024),
        server.audit_log_keep,
    )
    .map_err(|e| anyhow::anyhow!("cannot open the audit log {}: {e}", audit_path.display()))?;
    info!(path = %audit_path.display(), "audit log");
    let _ = state.set_audit_log(audit);
    serve(listener, state, shutdown_signal()).await?;
    info!("server stopped; running sandboxes keep running and are re-attached at the next start");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
