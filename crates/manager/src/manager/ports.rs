//! Exposed ports: one host TCP listener per exposed guest port, every
//! connection it accepts carried to the guest's loopback by the agent's
//! forwarder. Listeners live as long as their sandbox (through pauses:
//! a connection to a paused sandbox resumes it when `auto_resume` is set,
//! else it is closed at once); destroy closes them; a restart binds them
//! again from the record, on the same host port when it is free.

use super::SandboxManager;
use crate::service::GuestOps as _;
use crate::{ExposedPort, ManagerError, Result, SandboxStatus};
use locale2b_protocol::SandboxId;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The open listeners of every sandbox.
#[derive(Debug, Default)]
pub(super) struct Ports {
    open: std::sync::Mutex<HashMap<SandboxId, BTreeMap<u16, Listener>>>,
}

/// A running listener: cancel it, then await its task (which owns the
/// socket) so that the port is closed when the caller goes on.
#[derive(Debug)]
struct Listener {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Ports {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, BTreeMap<u16, Listener>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops every listener of `id` (and the connections they carry).
    pub(super) async fn close_all(&self, id: &SandboxId) {
        let ports = self.lock().remove(id);
        for (_, l) in ports.into_iter().flatten() {
            l.stop().await;
        }
    }
}

impl SandboxManager {
    /// Exposes guest port `port` of sandbox `id` on a new host listener;
    /// `true` with the answer when it was exposed already.
    ///
    /// # Errors
    /// InvalidInput for port 0 or too many ports, NotFound, Conflict for
    /// a sandbox being destroyed or failed, Internal when no host port can
    /// be bound.
    pub async fn expose_port(&self, id: &SandboxId, port: u16) -> Result<(ExposedPort, bool)> {
        if port == 0 {
            return Err(ManagerError::InvalidInput(
                "port must be between 1 and 65535".into(),
            ));
        }
        let sb = self.registry.require(id)?;
        let _lifecycle = sb.lifecycle.lock().await;
        if !self.registry.contains(id) {
            return Err(ManagerError::NotFound {
                kind: "sandbox",
                id: id.to_string(),
            });
        }
        match sb.status() {
            SandboxStatus::Stopping | SandboxStatus::Dead => {
                return Err(ManagerError::Conflict(format!(
                    "sandbox {id} is {}; its ports cannot be exposed",
                    sb.status()
                )))
            }
            _ => {}
        }
        let record = sb.record();
        if let Some(p) = record.exposed_ports.iter().find(|p| p.port == port) {
            return Ok((p.clone(), true));
        }
        let max = self.config.max_exposed_ports as usize;
        if record.exposed_ports.len() >= max {
            return Err(ManagerError::InvalidInput(format!(
                "sandbox {id} has {max} exposed ports already (max_exposed_ports); close one first"
            )));
        }
        let exposed = self.listen(id, port, 0).await?;
        sb.update(|r| {
            r.exposed_ports.push(exposed.clone());
            r.exposed_ports.sort_by_key(|p| p.port);
        });
        info!(sandbox_id = %id, port, host_port = exposed.host_port, "port exposed");
        Ok((exposed, false))
    }

    /// The exposed ports of sandbox `id`, by port.
    ///
    /// # Errors
    /// NotFound.
    pub fn list_ports(&self, id: &SandboxId) -> Result<Vec<ExposedPort>> {
        Ok(self.registry.require(id)?.record().exposed_ports)
    }

    /// Closes exposed port `port` of sandbox `id`: its listener stops and
    /// the connections it carries end.
    ///
    /// # Errors
    /// NotFound for an unknown sandbox or a port that is not exposed.
    pub async fn close_port(&self, id: &SandboxId, port: u16) -> Result<()> {
        let sb = self.registry.require(id)?;
        let _lifecycle = sb.lifecycle.lock().await;
        if !sb.record().exposed_ports.iter().any(|p| p.port == port) {
            return Err(ManagerError::NotFound {
                kind: "exposed port",
                id: format!("{port} of sandbox {id}"),
            });
        }
        let listener = self
            .ports
            .lock()
            .get_mut(id)
            .and_then(|ports| ports.remove(&port));
        if let Some(l) = listener {
            l.stop().await;
        }
        sb.update(|r| r.exposed_ports.retain(|p| p.port != port));
        info!(sandbox_id = %id, port, "port closed");
        Ok(())
    }

    /// Binds the listeners of a recovered sandbox's exposed ports again
    /// (the same host port when free, else a new one; the record follows).
    pub(super) async fn reopen_ports(&self, id: &SandboxId) {
        let Some(sb) = self.registry.get(id) else {
            return;
        };
        let mut reopened = Vec::new();
        for p in sb.record().exposed_ports {
            let again = match self.listen(id, p.port, p.host_port).await {
                Ok(e) => Ok(e),
                Err(_) => self.listen(id, p.port, 0).await,
            };
            match again {
                Ok(e) => {
                    if e.host_port != p.host_port {
                        warn!(sandbox_id = %id, port = p.port, old = p.host_port, new = e.host_port, "exposed port moved to another host port");
                    }
                    reopened.push(e);
                }
                Err(e) => {
                    warn!(sandbox_id = %id, port = p.port, error = %crate::error::chain(&e), "cannot expose the port again; dropped");
                }
            }
        }
        sb.update(|r| r.exposed_ports = reopened);
    }

    /// Binds a listener for guest port `port` on `ports_host:host_port`
    /// (0: any free port) and starts serving it.
    async fn listen(&self, id: &SandboxId, port: u16, host_port: u16) -> Result<ExposedPort> {
        let addr = SocketAddr::new(self.config.ports_host, host_port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            ManagerError::io(format!("bind a listener for port {port} on {addr}"), e)
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| ManagerError::io("read the listener's address", e))?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            self.me.clone(),
            id.clone(),
            port,
            listener,
            cancel.clone(),
        ));
        let old = self
            .ports
            .lock()
            .entry(id.clone())
            .or_default()
            .insert(port, Listener { cancel, task });
        if let Some(old) = old {
            old.stop().await;
        }
        Ok(ExposedPort {
            port,
            host_port: bound.port(),
            url: format!(
                "http://{}/",
                host_and_port(&self.public_host(), bound.port())
            ),
            created_at: crate::store::now_rfc3339(),
        })
    }

    /// The host name the URLs of exposed ports use.
    fn public_host(&self) -> String {
        if let Some(h) = &self.config.public_host {
            return h.clone();
        }
        let ip = self.config.ports_host;
        if ip.is_unspecified() {
            return std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
        }
        ip.to_string()
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn host_and_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Accepts connections for guest port `port` until `cancel`.
async fn serve(
    manager: std::sync::Weak<SandboxManager>,
    id: SandboxId,
    port: u16,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (mut tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(sandbox_id = %id, port, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(m) = manager.upgrade() else { return };
        let guest = m.guest(&id);
        drop(m);
        let (id, cancel) = (id.clone(), cancel.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut conn = match guest.open_port(port).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(sandbox_id = %id, port, %peer, error = %crate::error::chain(&e), "forwarded connection refused");
                    return;
                }
            };
            tokio::select! {
                () = cancel.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut tcp, &mut conn) => {
                    debug!(sandbox_id = %id, port, %peer, result = ?r, "forwarded connection ended");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::host_and_port;

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(host_and_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(host_and_port("::1", 80), "[::1]:80");
        assert_eq!(host_and_port("box.lan", 80), "box.lan:80");
    }
}
