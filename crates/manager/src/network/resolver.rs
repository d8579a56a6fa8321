//! A sandbox's DNS resolver: a UDP socket on the gateway address inside
//! the sandbox's namespace. Allowed names are passed to the upstream
//! server (from the same namespace, so through the uplink like the
//! guest's own traffic); the answer's IPv4 addresses are added to the
//! sandbox's `learned` set for their TTL before the guest sees the answer.
//! Other names are answered REFUSED.

use super::dns;
use super::host;
use super::policy::Compiled;
use locale2b_protocol::SandboxId;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// How long the upstream server has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the resolver's port may stay taken by a previous resolver.
const BIND_WAIT: Duration = Duration::from_secs(3);
/// Shortest time a learned address stays allowed (an answer with TTL 0
/// must still let the connection that follows it through).
pub const MIN_LEARN_SEC: u64 = 30;
/// Longest.
const MAX_LEARN_SEC: u64 = 24 * 3600;
/// Learned addresses kept in memory (for a policy change) before expired
/// ones are dropped.
const MAX_REMEMBERED: usize = 4096;

struct Shared {
    id: SandboxId,
    netns: PathBuf,
    policy: RwLock<Compiled>,
    /// Learned address → (the name it was learned for, until when).
    learned: Mutex<HashMap<Ipv4Addr, (String, Instant)>>,
}

/// A running resolver.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Makes the resolver's sockets inside namespace `netns`: the listening
/// one on the gateway's port 53 and one connected to `upstream`.
fn sockets_in(
    netns: &std::path::Path,
    upstream: Ipv4Addr,
) -> Result<(std::net::UdpSocket, std::net::UdpSocket), String> {
    let file = std::fs::File::open(netns)
        .map_err(|e| format!("opening network namespace {}: {e}", netns.display()))?;
    // A thread of its own enters the namespace; sockets keep the namespace
    // they were made in.
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the sandbox's network namespace: {e}"))?;
        // A resolver of a server that just went away may hold the port for
        // a moment longer.
        let deadline = std::time::Instant::now() + BIND_WAIT;
        let listen = loop {
            match std::net::UdpSocket::bind(SocketAddrV4::new(host::GATEWAY, 53)) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("binding the resolver to {}:53: {e}", host::GATEWAY)),
            }
        };
        let up = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .map_err(|e| format!("binding the resolver's upstream socket: {e}"))?;
        up.connect(SocketAddrV4::new(upstream, 53))
            .map_err(|e| format!("connecting to DNS server {upstream}: {e}"))?;
        for s in [&listen, &up] {
            s.set_nonblocking(true)
                .map_err(|e| format!("resolver socket: {e}"))?;
        }
        Ok((listen, up))
    })
    .join()
    .map_err(|_| "the resolver's setup thread panicked".to_owned())?
}

/// Starts the resolver of sandbox `id`.
pub fn start(
    id: SandboxId,
    netns: PathBuf,
    policy: Compiled,
    upstream: Ipv4Addr,
) -> Result<Handle, String> {
    let (listen, up) = sockets_in(&netns, upstream)?;
    let listen = tokio::net::UdpSocket::from_std(listen).map_err(|e| e.to_string())?;
    let up = tokio::net::UdpSocket::from_std(up).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        id,
        netns,
        policy: RwLock::new(policy),
        learned: Mutex::new(HashMap::new()),
    });
    let task = tokio::spawn(serve(shared.clone(), listen, up));
    Ok(Handle {
        shared,
        task: Arc::new(Mutex::new(Some(task))),
    })
}

impl Handle {
    /// Answers by `policy` from the next query on.
    pub fn set_policy(&self, policy: Compiled) {
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// After the rules were replaced (their learned set is empty again):
    /// adds back the addresses still in their TTL whose names the policy
    /// still resolves.
    pub async fn relearn(&self) {
        let policy = self
            .shared
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let now = Instant::now();
        let keep: Vec<(Ipv4Addr, u64)> = {
            let mut learned = self
                .shared
                .learned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            learned.retain(|_, (name, until)| *until > now && policy.resolves(name));
            learned
                .iter()
                .map(|(ip, (_, until))| (*ip, until.duration_since(now).as_secs().max(1)))
                .collect()
        };
        if policy.learns() && !keep.is_empty() {
            learn(&self.shared, &keep).await;
        }
    }

    /// Stops the resolver without waiting (its sockets close when the
    /// runtime drops the task).
    pub fn abort(&self) {
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            t.abort();
        }
    }

    /// Stops the resolver and waits until its sockets are closed.
    pub async fn stop(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn learn(shared: &Shared, addrs: &[(Ipv4Addr, u64)]) {
    let ns = shared.netns.to_string_lossy().into_owned();
    if let Err(e) = host::run(
        Some(&ns),
        "nft",
        &["-f", "-"],
        Some(&host::learn_command(addrs)),
    )
    .await
    {
        warn!(sandbox_id = %shared.id, error = %e, "adding resolved addresses to the sandbox's allow set");
    }
}

async fn serve(shared: Arc<Shared>, listen: tokio::net::UdpSocket, up: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 4096];
    let mut reply = vec![0u8; 4096];
    loop {
        let (n, peer) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(sandbox_id = %shared.id, error = %e, "resolver receive failed");
                continue;
            }
        };
        let Ok(q) = dns::parse_query(&buf[..n]) else {
            debug!(sandbox_id = %shared.id, "resolver: ignored a malformed query");
            continue;
        };
        let policy = shared
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !policy.resolves(&q.name) {
            debug!(sandbox_id = %shared.id, name = %q.name, "resolver: refused a name outside the policy");
            let _ = listen
                .send_to(&dns::reply(&q, dns::RCODE_REFUSED), peer)
                .await;
            continue;
        }
        let answer = ask_upstream(&up, &buf[..n], &q, &mut reply).await;
        let Some(len) = answer else {
            let _ = listen
                .send_to(&dns::reply(&q, dns::RCODE_SERVFAIL), peer)
                .await;
            continue;
        };
        if policy.learns() {
            let addrs: Vec<(Ipv4Addr, u64)> = dns::answer_ipv4(&reply[..len])
                .unwrap_or_default()
                .into_iter()
                .map(|(ip, ttl)| (ip, u64::from(ttl).clamp(MIN_LEARN_SEC, MAX_LEARN_SEC)))
                .collect();
            if !addrs.is_empty() {
                let now = Instant::now();
                {
                    let mut learned = shared
                        .learned
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if learned.len() > MAX_REMEMBERED {
                        learned.retain(|_, (_, until)| *until > now);
                    }
                    for (ip, secs) in &addrs {
                        learned.insert(*ip, (q.name.clone(), now + Duration::from_secs(*secs)));
                    }
                }
                // Before the guest has the answer: its connection may
                // follow at once.
                learn(&shared, &addrs).await;
            }
        }
        let _ = listen.send_to(&reply[..len], peer).await;
    }
}

/// Sends the query upstream and waits for its answer (others, late
/// answers to earlier queries, are skipped).
async fn ask_upstream(
    up: &tokio::net::UdpSocket,
    query: &[u8],
    q: &dns::Question,
    reply: &mut [u8],
) -> Option<usize> {
    up.send(query).await.ok()?;
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, up.recv(reply))
            .await
            .ok()?
            .ok()?;
        if dns::answers(&reply[..n], q) {
            return Some(n);
        }
    }
}
