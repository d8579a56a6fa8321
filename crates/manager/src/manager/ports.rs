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
    /// `true` with the answer when it was exposed already. With `protect`
    /// the port gets an access token that every connection must present.
    ///
    /// # Errors
    /// InvalidInput for port 0 or too many ports, NotFound, Conflict for
    /// a sandbox being destroyed or failed, Internal when no host port can
    /// be bound.
    pub async fn expose_port(
        &self,
        id: &SandboxId,
        port: u16,
        protect: bool,
    ) -> Result<(ExposedPort, bool)> {
        if port == 0 {
            return Err(ManagerError::InvalidInput(
                "port must be between 1 and 65535".into(),
            ));
        }
        let sb = self.registry.require(id)?;
        let _lifecycle = sb.lifecycle.lock().await;
        self.still_registered(id)?;
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
            if p.access_token.is_some() != protect {
                return Err(ManagerError::Conflict(format!(
                    "port {port} of sandbox {id} is exposed already {}; close it first to change that",
                    if protect { "without an access token" } else { "with an access token" }
                )));
            }
            return Ok((p.clone(), true));
        }
        let max = self.config.max_exposed_ports as usize;
        if record.exposed_ports.len() >= max {
            return Err(ManagerError::InvalidInput(format!(
                "sandbox {id} has {max} exposed ports already (max_exposed_ports); close one first"
            )));
        }
        let token = protect.then(new_token);
        let exposed = self.listen(id, port, 0, token).await?;
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

    /// Whether Host-header routing reaches `port` of sandbox `id`, and the
    /// token it then asks for: an exposed port's own, else the sandbox's
    /// when it routes every port ([`crate::RouteAllPorts`]).
    ///
    /// # Errors
    /// NotFound.
    pub fn port_route(&self, id: &SandboxId, port: u16) -> Result<crate::PortRoute> {
        let r = self.registry.require(id)?.record();
        let token = if let Some(p) = r.exposed_ports.iter().find(|p| p.port == port) {
            p.access_token.clone()
        } else if let Some(all) = &r.route_all_ports {
            all.access_token.clone()
        } else {
            return Ok(crate::PortRoute::Closed);
        };
        Ok(token.map_or(crate::PortRoute::Open, crate::PortRoute::Token))
    }

    /// Closes exposed port `port` of sandbox `id`: its listener stops and
    /// the connections it carries end.
    ///
    /// # Errors
    /// NotFound for an unknown sandbox or a port that is not exposed.
    pub async fn close_port(&self, id: &SandboxId, port: u16) -> Result<()> {
        let sb = self.registry.require(id)?;
        let _lifecycle = sb.lifecycle.lock().await;
        self.still_registered(id)?;
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
            let again = match self
                .listen(id, p.port, p.host_port, p.access_token.clone())
                .await
            {
                Ok(e) => Ok(e),
                Err(_) => self.listen(id, p.port, 0, p.access_token.clone()).await,
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
    async fn listen(
        &self,
        id: &SandboxId,
        port: u16,
        host_port: u16,
        access_token: Option<String>,
    ) -> Result<ExposedPort> {
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
            access_token.clone(),
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
            access_token,
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

/// A fresh access token: 32 random bytes from the OS, hex (64 chars).
#[must_use]
pub fn new_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest HTTP request head read to find a port's access token.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send that head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether an HTTP request head carries `token` in
/// [`crate::PORT_TOKEN_HEADER`] (compared in constant time).
pub fn head_has_token(head: &[u8], token: &str) -> bool {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case(crate::PORT_TOKEN_HEADER)
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    value.trim().as_bytes(),
                    token.as_bytes(),
                ))
        })
    })
}

/// Reads the first request head of a connection to a protected port; the
/// bytes read (to be passed on) when it carries the token, else answers
/// 403 (or 400 for something that is not an HTTP head) and `None`.
async fn admit(tcp: &mut tokio::net::TcpStream, token: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    })
    .await;
    let complete = matches!(read, Ok(Some(()))) && buf.windows(4).any(|w| w == b"\r\n\r\n");
    if complete && head_has_token(&buf, token) {
        return Some(buf);
    }
    let (status, why) = if complete {
        (
            "403 Forbidden",
            "this port needs its access token in the e2b-traffic-access-token header",
        )
    } else {
        ("400 Bad Request", "this port needs an HTTP request with its access token in the e2b-traffic-access-token header")
    };
    let body = format!("{why}\n");
    let _ = tcp
        .write_all(
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    None
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
    access_token: Option<String>,
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
        let (id, cancel, token) = (id.clone(), cancel.clone(), access_token.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let head = match &token {
                Some(t) => match admit(&mut tcp, t).await {
                    Some(head) => head,
                    None => {
                        debug!(sandbox_id = %id, port, %peer, "connection without the port's access token refused");
                        return;
                    }
                },
                None => Vec::new(),
            };
            let mut conn = match guest.open_port(port).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(sandbox_id = %id, port, %peer, error = %crate::error::chain(&e), "forwarded connection refused");
                    return;
                }
            };
            if !head.is_empty() {
                use tokio::io::AsyncWriteExt as _;
                if conn.write_all(&head).await.is_err() {
                    return;
                }
            }
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
    use super::{head_has_token, host_and_port};

    #[test]
    fn tokens_are_found_in_request_heads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nE2B-Traffic-Access-Token:  abc \r\n\r\n";
        assert!(head_has_token(head, "abc"));
        assert!(!head_has_token(head, "abd"));
        assert!(!head_has_token(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "abc"));
        // Not in the request line.
        assert!(!head_has_token(
            b"GET /e2b-traffic-access-token:abc HTTP/1.1\r\n\r\n",
            "abc"
        ));
    }

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(host_and_port("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(host_and_port("::1", 80), "[::1]:80");
        assert_eq!(host_and_port("box.lan", 80), "box.lan:80");
    }
}
