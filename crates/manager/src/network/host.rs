//! The host side of a sandbox's network: its namespace, the veth pair to
//! the uplink namespace, the guest's tap, and the nftables rules, all made
//! with `ip`, `sysctl` and `nft` (run inside a namespace through
//! `nsenter --net=`).
//!
//! Inside the sandbox's namespace `l2b-<sandbox id>`:
//!
//! ```text
//!  guest eth0 10.254.0.2/30 ── tap0 10.254.0.1/30 ─┐ forward (policy) + masquerade
//!                                                  up0 <pool>.2/30 ── veth ── l2b<id> <pool>.1/30 (uplink namespace)
//! ```
//!
//! Every sandbox has the same guest addresses (each has its own namespace);
//! only the veth pair's /30 comes from the pool.

use super::policy::{Compiled, Net4, NetworkMode, PRIVATE_RANGES};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The tap device's name in the sandbox's namespace.
pub const TAP: &str = "tap0";
/// The veth end in the sandbox's namespace.
pub const UPLINK_IF: &str = "up0";
/// The host's (tap's) address: the guest's gateway and DNS server.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
/// The guest's address.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
/// Prefix length of the guest's network.
pub const GUEST_PREFIX: u8 = 30;
/// The guest's MAC address (locally administered; the same in every
/// sandbox, each on its own tap).
pub const GUEST_MAC: &str = "02:4c:32:62:00:02";
/// The tap's MAC address: fixed, so that a guest cloned from another
/// sandbox's snapshot (a fork), whose ARP cache holds the gateway's
/// address, still finds its own gateway.
pub const GATEWAY_MAC: &str = "02:4c:32:62:00:01";
/// The nftables table in each sandbox's namespace.
pub const TABLE: &str = "locale2b";
/// The nftables table in the uplink namespace (masquerade of the pool).
pub const UPLINK_TABLE: &str = "locale2b_uplink";
/// How long one `ip`/`nft` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The namespace of a sandbox.
pub fn netns_name(sandbox: &str) -> String {
    format!("l2b-{sandbox}")
}

/// The namespace file of a sandbox.
pub fn netns_path(sandbox: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", netns_name(sandbox)))
}

/// The veth end in the uplink namespace: `l2b` + the last 12 characters of
/// the id (interface names have at most 15).
pub fn host_if(sandbox: &str) -> String {
    let tail = &sandbox[sandbox.len().saturating_sub(12)..];
    format!("l2b{tail}")
}

/// The uplink side (`.1`) and sandbox side (`.2`) of slot `slot`'s /30.
pub fn slot_addrs(pool: Net4, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(pool.addr) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// How many /30s the pool holds.
pub fn slots_in(pool: Net4) -> u32 {
    if pool.prefix >= 30 {
        0
    } else {
        1 << (30 - u32::from(pool.prefix))
    }
}

/// Runs `program args` (inside namespace file `ns` when given), feeding
/// `stdin`; answers stdout, or an error naming the command and its stderr.
pub async fn run(
    ns: Option<&str>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = tokio::process::Command::new(locale2b_vmm::NSENTER);
            c.arg(format!("--net={ns}")).arg("--").arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{shown}: writing its input: {e}"))?;
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{shown} did not finish in {COMMAND_TIMEOUT:?}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The IPv4 addresses of namespace `ns` (the uplink: "the host's own
/// addresses", which no sandbox reaches).
pub async fn local_addrs(ns: Option<&str>) -> Result<Vec<Ipv4Addr>, String> {
    let out = run(ns, "ip", &["-j", "-4", "addr", "show"], None).await?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("ip -j addr: unexpected output: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect())
}

fn set_elements(nets: impl IntoIterator<Item = String>) -> String {
    let all: Vec<String> = nets.into_iter().collect();
    if all.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", all.join(", "))
    }
}

/// The sandbox namespace's whole table for policy `c` (`host` = the
/// uplink's own addresses). Loaded as one transaction that replaces the
/// previous table.
pub fn ruleset(c: &Compiled, host: &[Ipv4Addr]) -> String {
    let allow = set_elements(c.allow_nets.iter().map(ToString::to_string));
    let deny = set_elements(
        PRIVATE_RANGES
            .iter()
            .map(ToString::to_string)
            .chain(host.iter().map(ToString::to_string))
            .chain(c.deny_nets.iter().map(ToString::to_string)),
    );
    let out = format!("iifname \"{TAP}\" oifname \"{UPLINK_IF}\"");
    let mut forward = vec!["ct state established,related accept".to_owned()];
    let mut input = vec![
        "ct state established,related accept".to_owned(),
        "iif \"lo\" accept".to_owned(),
    ];
    if c.mode != NetworkMode::None {
        forward.push(format!("{out} ip daddr @allow_nets accept"));
        forward.push(format!("{out} ip daddr @deny_nets drop"));
        forward.push(match c.mode {
            NetworkMode::Full => format!("{out} meta nfproto ipv4 accept"),
            _ => format!("{out} ip daddr @learned accept"),
        });
        input.push(format!(
            "iifname \"{TAP}\" ip daddr {GATEWAY} udp dport 53 accept"
        ));
    }
    let indent = |rules: Vec<String>| rules.join("\n\t\t");
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
         \tset allow_nets {{ type ipv4_addr; flags interval; auto-merge;{allow} }}\n\
         \tset deny_nets {{ type ipv4_addr; flags interval; auto-merge;{deny} }}\n\
         \tset learned {{ type ipv4_addr; flags timeout; }}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t{}\n\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n\t\t{}\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\toifname \"{UPLINK_IF}\" masquerade\n\t}}\n}}\n",
        indent(forward),
        indent(input),
    )
}

/// The uplink namespace's table: masquerade what comes from the pool.
pub fn uplink_ruleset(pool: Net4) -> String {
    format!(
        "table ip {UPLINK_TABLE}\ndelete table ip {UPLINK_TABLE}\ntable ip {UPLINK_TABLE} {{\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pool} oifname != \"l2b*\" masquerade\n\t}}\n}}\n"
    )
}

/// `nft` lines that add learned addresses with their timeouts.
pub fn learn_command(addrs: &[(Ipv4Addr, u64)]) -> String {
    let elems: Vec<String> = addrs
        .iter()
        .map(|(ip, secs)| format!("{ip} timeout {secs}s"))
        .collect();
    format!(
        "add element inet {TABLE} learned {{ {} }}\n",
        elems.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::policy::NetworkPolicy;

    fn compiled(mode: NetworkMode, allow: &[&str], deny: &[&str]) -> Compiled {
        NetworkPolicy {
            mode,
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
        .compile()
        .expect("valid")
    }

    #[test]
    fn names_fit_the_kernel_limits_and_slots_carve_the_pool() {
        assert_eq!(host_if("sb-3k9x0q2m1z7a"), "l2b3k9x0q2m1z7a");
        assert!(host_if("sb-3k9x0q2m1z7a").len() <= 15);
        assert_eq!(netns_path("sb-1").to_str(), Some("/run/netns/l2b-sb-1"));
        let pool: Net4 = "10.213.0.0/16".parse().expect("pool");
        assert_eq!(slots_in(pool), 16384);
        assert_eq!(
            slot_addrs(pool, 0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            slot_addrs(pool, 64),
            (Ipv4Addr::new(10, 213, 1, 1), Ipv4Addr::new(10, 213, 1, 2))
        );
    }

    #[test]
    fn the_ruleset_follows_the_mode() {
        let host = [Ipv4Addr::new(192, 0, 2, 1)];
        let allow = ruleset(
            &compiled(NetworkMode::Allowlist, &["a.test", "10.77.0.0/16"], &[]),
            &host,
        );
        assert!(
            allow.starts_with("table inet locale2b\ndelete table inet locale2b\n"),
            "{allow}"
        );
        assert!(allow.contains("set allow_nets { type ipv4_addr; flags interval; auto-merge; elements = { 10.77.0.0/16 }; }"), "{allow}");
        assert!(
            allow.contains("10.0.0.0/8") && allow.contains("192.0.2.1"),
            "{allow}"
        );
        assert!(
            allow.contains("ip daddr @learned accept")
                && !allow.contains("meta nfproto ipv4 accept")
        );
        assert!(allow.contains("udp dport 53 accept"));
        let full = ruleset(&compiled(NetworkMode::Full, &[], &["1.2.3.0/24"]), &host);
        assert!(full.contains("meta nfproto ipv4 accept") && !full.contains("@learned accept"));
        assert!(full.contains("1.2.3.0/24"));
        assert!(
            full.contains("set allow_nets { type ipv4_addr; flags interval; auto-merge; }"),
            "empty set without elements: {full}"
        );
        let none = ruleset(&compiled(NetworkMode::None, &[], &[]), &host);
        assert!(
            !none.contains("accept\n\t\tiifname") && !none.contains("udp dport 53"),
            "{none}"
        );
        assert!(none.contains("policy drop"));
        assert_eq!(
            learn_command(&[(Ipv4Addr::new(198, 51, 100, 10), 300)]),
            "add element inet locale2b learned { 198.51.100.10 timeout 300s }\n"
        );
        assert!(uplink_ruleset("10.213.0.0/16".parse().expect("pool"))
            .contains("ip saddr 10.213.0.0/16 oifname != \"l2b*\" masquerade"));
    }
}
