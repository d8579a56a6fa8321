//! Egress networks for sandboxes that ask for one: a network namespace per
//! sandbox with the guest's tap and a veth pair to the uplink namespace
//! (the host's own, or `network_uplink_netns`), nftables rules that apply
//! the sandbox's [`NetworkPolicy`], and a DNS resolver on the tap's address
//! that answers only the names the policy allows and, for an allowlist,
//! lets the guest reach the addresses it answered for their TTL.
//!
//! A sandbox without a policy (mode `none`, the default) has none of this:
//! no NIC at all.

pub mod dns;
pub mod host;
pub mod policy;
mod resolver;

pub use policy::{Compiled, Net4, NetworkMode, NetworkPolicy};

use locale2b_protocol::{GuestNetwork, SandboxId};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use tracing::{info, warn};

/// Settings of the egress networks (from the manager's configuration).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where the veth pairs' /30s come from.
    pub pool: Net4,
    /// The namespace sandboxes' traffic leaves through (a name under
    /// `/run/netns`); `None` = the server's own.
    pub uplink_netns: Option<String>,
    /// Upstream DNS server; `None` = the first IPv4 `nameserver` of
    /// `/etc/resolv.conf`.
    pub dns_upstream: Option<Ipv4Addr>,
}

/// A sandbox's live network: its resolver and the policy it applies.
struct Live {
    resolver: resolver::Handle,
}

/// The egress networks of all sandboxes.
pub struct Networks {
    config: NetworkConfig,
    /// Why networks cannot be made on this host (`None`: they can).
    unavailable: Option<String>,
    slots: Mutex<BTreeSet<u32>>,
    live: Mutex<HashMap<SandboxId, Live>>,
    uplink_ready: tokio::sync::Mutex<bool>,
}

impl Drop for Networks {
    /// A manager that goes away (server shutdown, tests) takes its
    /// resolvers with it; the namespaces stay for the VMs that outlive it.
    fn drop(&mut self) {
        let live = self
            .live
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, l) in live.drain() {
            l.resolver.abort();
        }
    }
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks")
            .field("config", &self.config)
            .field("unavailable", &self.unavailable)
            .finish_non_exhaustive()
    }
}

fn find_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// Why this process cannot make sandbox networks, if it cannot.
pub fn probe() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(format!(
            "egress networks need root (network namespaces, taps and nftables); this server runs as uid {}",
            nix::unistd::geteuid()
        ));
    }
    for p in ["ip", "nft", locale2b_vmm::NSENTER] {
        if !find_program(p) {
            return Some(format!(
                "egress networks need `{p}` on PATH (Debian packages iproute2, nftables, util-linux; scripts/setup.sh installs them)"
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("egress networks need /dev/net/tun (the tun kernel module)".into());
    }
    None
}

/// Where the host's resolvers are listed: the usual file, then the one
/// systemd-resolved keeps with the real upstream servers (its stub at
/// `127.0.0.53` is what `/etc/resolv.conf` names on Ubuntu).
pub const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The DNS server sandbox resolvers ask: `configured`, else the first
/// non-loopback IPv4 `nameserver` of the files in `RESOLV_CONFS`.
///
/// # Errors
/// When there is none: only loopback stubs, which a sandbox's namespace
/// cannot reach, or no IPv4 nameserver at all.
pub fn dns_upstream(configured: Option<Ipv4Addr>) -> Result<Ipv4Addr, String> {
    upstream_from(configured, &RESOLV_CONFS)
}

fn upstream_from(configured: Option<Ipv4Addr>, files: &[&str]) -> Result<Ipv4Addr, String> {
    if let Some(ip) = configured {
        return Ok(ip);
    }
    let mut loopback = None;
    for f in files {
        let conf = std::fs::read_to_string(f).unwrap_or_default();
        let servers = conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok());
        for ip in servers {
            if !ip.is_loopback() {
                return Ok(ip);
            }
            loopback.get_or_insert(ip);
        }
    }
    Err(match loopback {
        Some(ip) => format!(
            "the host's resolver {ip} is a loopback address, which a sandbox's namespace cannot reach, and no other is listed ({}): set LOCALE2B_NETWORK_DNS_UPSTREAM to a DNS server it can reach",
            files.join(", ")
        ),
        None => format!(
            "no IPv4 nameserver in {}: set LOCALE2B_NETWORK_DNS_UPSTREAM",
            files.join(", ")
        ),
    })
}

impl Networks {
    /// Networks with `config`, checking what this host can do.
    pub fn new(config: NetworkConfig) -> Self {
        let unavailable = probe();
        if let Some(why) = &unavailable {
            info!(reason = %why, "sandboxes with a network policy cannot be created");
        }
        Self {
            config,
            unavailable,
            slots: Mutex::new(BTreeSet::new()),
            live: Mutex::new(HashMap::new()),
            uplink_ready: tokio::sync::Mutex::new(false),
        }
    }

    /// Fails with the reason when networks cannot be made here.
    ///
    /// # Errors
    /// The reason, for a 501.
    pub fn check_available(&self) -> Result<(), String> {
        self.unavailable.clone().map_or(Ok(()), Err)
    }

    /// Takes a free slot of the pool.
    ///
    /// # Errors
    /// When every slot is taken.
    pub fn allocate(&self) -> Result<u32, String> {
        let mut used = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let free = (0..host::slots_in(self.config.pool))
            .find(|s| !used.contains(s))
            .ok_or_else(|| {
                format!(
                    "every /30 of network_pool {} is in use: give a larger pool",
                    self.config.pool
                )
            })?;
        used.insert(free);
        Ok(free)
    }

    /// Marks `slot` used (a recovered sandbox's).
    pub fn claim(&self, slot: u32) {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(slot);
    }

    fn uplink_ns_path(&self) -> Option<String> {
        self.config
            .uplink_netns
            .as_ref()
            .map(|n| format!("/run/netns/{n}"))
    }

    /// What the guest's `init` sets up.
    pub fn guest_config() -> GuestNetwork {
        GuestNetwork {
            address: format!("{}/{}", host::GUEST, host::GUEST_PREFIX),
            gateway: host::GATEWAY.to_string(),
            nameserver: host::GATEWAY.to_string(),
        }
    }

    /// The NIC the VMM of sandbox `id` gets.
    pub fn vm_net(id: &SandboxId) -> locale2b_vmm::NetSpec {
        locale2b_vmm::NetSpec {
            netns: host::netns_path(id.as_str()),
            tap: host::TAP.into(),
            mac: host::GUEST_MAC.into(),
        }
    }

    fn upstream(&self) -> Result<Ipv4Addr, String> {
        dns_upstream(self.config.dns_upstream)
    }

    /// Forwarding and masquerade in the uplink namespace, once.
    async fn prepare_uplink(&self) -> Result<(), String> {
        let mut ready = self.uplink_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let ns = self.uplink_ns_path();
        host::run(
            ns.as_deref(),
            "sysctl",
            &["-qw", "net.ipv4.ip_forward=1"],
            None,
        )
        .await?;
        host::run(
            ns.as_deref(),
            "nft",
            &["-f", "-"],
            Some(&host::uplink_ruleset(self.config.pool)),
        )
        .await?;
        *ready = true;
        Ok(())
    }

    /// Makes (or, with `fresh == false`, re-uses when it exists) sandbox
    /// `id`'s namespace on slot `slot`, applies `policy` and starts its
    /// resolver. Answers the NIC for its VMM.
    ///
    /// # Errors
    /// A message naming the step that failed; whatever was made is removed.
    pub async fn up(
        &self,
        id: &SandboxId,
        slot: u32,
        policy: &NetworkPolicy,
        fresh: bool,
    ) -> Result<locale2b_vmm::NetSpec, String> {
        self.check_available()?;
        let compiled = policy.compile()?;
        let upstream = self.upstream()?;
        let path = host::netns_path(id.as_str());
        let building = fresh || !path.exists();
        let result = async {
            self.prepare_uplink().await?;
            if building {
                self.remove(id).await;
                self.build(id, slot).await?;
            }
            self.apply_rules(id, &compiled).await?;
            self.start_resolver(id, compiled, upstream)?;
            Ok::<_, String>(())
        }
        .await;
        match result {
            Ok(()) => {
                info!(sandbox_id = %id, slot, mode = %policy.mode, "sandbox network up");
                Ok(Self::vm_net(id))
            }
            Err(e) => {
                // A namespace a running VM is in stays; one made here goes.
                if building {
                    self.remove(id).await;
                }
                Err(e)
            }
        }
    }

    async fn build(&self, id: &SandboxId, slot: u32) -> Result<(), String> {
        let name = host::netns_name(id.as_str());
        let ns_path = host::netns_path(id.as_str());
        let ns = ns_path.to_string_lossy().into_owned();
        let uplink = self.uplink_ns_path();
        let veth = host::host_if(id.as_str());
        let (outer, inner) = host::slot_addrs(self.config.pool, slot);
        host::run(None, "ip", &["netns", "add", &name], None).await?;
        let uplink_cmds = format!(
            "link add {veth} type veth peer name {up} netns {name}\n\
             addr add {outer}/30 dev {veth}\n\
             link set {veth} up\n",
            up = host::UPLINK_IF,
        );
        host::run(
            uplink.as_deref(),
            "ip",
            &["-batch", "-"],
            Some(&uplink_cmds),
        )
        .await?;
        let inner_cmds = format!(
            "link set lo up\n\
             addr add {inner}/30 dev {up}\n\
             link set {up} up\n\
             route add default via {outer}\n\
             tuntap add dev {tap} mode tap\n\
             link set {tap} address {mac}\n\
             addr add {gw}/{prefix} dev {tap}\n\
             link set {tap} up\n",
            up = host::UPLINK_IF,
            tap = host::TAP,
            gw = host::GATEWAY,
            mac = host::GATEWAY_MAC,
            prefix = host::GUEST_PREFIX,
        );
        host::run(Some(&ns), "ip", &["-batch", "-"], Some(&inner_cmds)).await?;
        host::run(
            Some(&ns),
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            None,
        )
        .await?;
        Ok(())
    }

    async fn apply_rules(&self, id: &SandboxId, c: &Compiled) -> Result<(), String> {
        let uplink = self.uplink_ns_path();
        let host_addrs = host::local_addrs(uplink.as_deref()).await?;
        let ns = host::netns_path(id.as_str()).to_string_lossy().into_owned();
        host::run(
            Some(&ns),
            "nft",
            &["-f", "-"],
            Some(&host::ruleset(c, &host_addrs)),
        )
        .await?;
        Ok(())
    }

    fn start_resolver(
        &self,
        id: &SandboxId,
        c: Compiled,
        upstream: Ipv4Addr,
    ) -> Result<(), String> {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = live.get(id) {
            l.resolver.set_policy(c);
            return Ok(());
        }
        let handle = resolver::start(id.clone(), host::netns_path(id.as_str()), c, upstream)?;
        live.insert(id.clone(), Live { resolver: handle });
        Ok(())
    }

    /// Applies a new policy to sandbox `id`'s running network: rules and
    /// resolver, then the addresses it learned for names still allowed.
    ///
    /// # Errors
    /// As [`Networks::up`].
    pub async fn apply(&self, id: &SandboxId, policy: &NetworkPolicy) -> Result<(), String> {
        self.check_available()?;
        let compiled = policy.compile()?;
        self.apply_rules(id, &compiled).await?;
        let resolver = {
            let live = self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            live.get(id).map(|l| l.resolver.clone())
        };
        if let Some(r) = resolver {
            r.set_policy(compiled);
            r.relearn().await;
        }
        info!(sandbox_id = %id, mode = %policy.mode, "sandbox network policy applied");
        Ok(())
    }

    /// Stops the resolver and deletes the namespace (its tap, veth pair and
    /// rules go with it). Idempotent.
    async fn remove(&self, id: &SandboxId) {
        let handle = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some(l) = handle {
            l.resolver.stop().await;
        }
        let name = host::netns_name(id.as_str());
        if host::netns_path(id.as_str()).exists() {
            if let Err(e) = host::run(None, "ip", &["netns", "del", &name], None).await {
                warn!(sandbox_id = %id, error = %e, "deleting the sandbox's network namespace");
            }
        }
        // The uplink end goes with its peer; remove a leftover anyway.
        let uplink = self.uplink_ns_path();
        let veth = host::host_if(id.as_str());
        let _ = host::run(uplink.as_deref(), "ip", &["link", "del", &veth], None).await;
    }

    /// Tears sandbox `id`'s network down and frees its slot.
    pub async fn down(&self, id: &SandboxId, slot: Option<u32>) {
        self.remove(id).await;
        if let Some(s) = slot {
            self.slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&s);
        }
        info!(sandbox_id = %id, "sandbox network removed");
    }

    /// Stops every resolver (server shutdown); namespaces stay for the
    /// sandboxes that outlive the server.
    pub async fn stop_resolvers(&self) {
        let all: Vec<Live> = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in all {
            l.resolver.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_skips_loopback_stubs_for_the_real_servers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p.to_string_lossy().into_owned()
        };
        let stub = write(
            "stub",
            "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0\n",
        );
        let real = write(
            "real",
            "nameserver fe80::1\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n",
        );
        let empty = write("empty", "search lan\n");
        assert_eq!(
            upstream_from(None, &[&stub, &real]),
            Ok(Ipv4Addr::new(192, 0, 2, 53))
        );
        assert_eq!(
            upstream_from(None, &[&real, &stub]),
            Ok(Ipv4Addr::new(192, 0, 2, 53))
        );
        let configured = Some(Ipv4Addr::new(198, 51, 100, 53));
        assert_eq!(
            upstream_from(configured, &[&stub]),
            Ok(Ipv4Addr::new(198, 51, 100, 53))
        );
        let only_stub = upstream_from(None, &[&stub, &empty]).expect_err("stub only");
        assert!(
            only_stub.contains("127.0.0.53 is a loopback")
                && only_stub.contains("LOCALE2B_NETWORK_DNS_UPSTREAM"),
            "{only_stub}"
        );
        let none = upstream_from(None, &[&empty, "/nonexistent"]).expect_err("none");
        assert!(none.starts_with("no IPv4 nameserver"), "{none}");
    }
}
