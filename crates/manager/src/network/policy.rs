//! Egress policies: what a sandbox's guest may connect to.
//!
//! A policy is a mode plus two lists. Entries are domain names (`pypi.org`,
//! `*.github.com`), IPv4 addresses or IPv4 CIDRs. [`NetworkPolicy::compile`]
//! checks every entry and gives the form the resolver and the firewall
//! use. The rules, in order:
//!
//! 1. an address in an `allow` CIDR is reachable (even in a private range);
//! 2. an address in a `deny` CIDR, a private, link-local or loopback range,
//!    or one of the host's own addresses is not;
//! 3. `full`: everything else is reachable; `allowlist`: only addresses the
//!    resolver answered for an allowed name, for the answer's TTL.
//!
//! A name is resolved when it matches `allow`, or (mode `full`) when it
//! does not match `deny`.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// Most entries in `allow` plus `deny`.
pub const MAX_ENTRIES: usize = 256;

/// How much of the network a sandbox reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// No network device at all (the default).
    #[default]
    None,
    /// Only the names and CIDRs in `allow`.
    Allowlist,
    /// Any public address, minus `deny`.
    Full,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Allowlist => "allowlist",
            Self::Full => "full",
        })
    }
}

/// A sandbox's egress policy, as the API takes and shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// The mode.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Names and CIDRs that are reachable (in any mode but `none`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Names and CIDRs that are not (mode `full`; `allow` wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl NetworkPolicy {
    /// Whether the sandbox gets a network device.
    pub fn networked(&self) -> bool {
        self.mode != NetworkMode::None
    }

    /// Checks every entry and compiles the policy.
    ///
    /// # Errors
    /// A message naming the first bad entry (for a 400).
    pub fn compile(&self) -> Result<Compiled, String> {
        if self.allow.len() + self.deny.len() > MAX_ENTRIES {
            return Err(format!(
                "a network policy has at most {MAX_ENTRIES} entries in allow and deny together (got {})",
                self.allow.len() + self.deny.len()
            ));
        }
        if self.mode == NetworkMode::None && !(self.allow.is_empty() && self.deny.is_empty()) {
            return Err(
                "network mode \"none\" takes no allow or deny entries: use mode \"allowlist\" or \"full\""
                    .into(),
            );
        }
        let mut c = Compiled {
            mode: self.mode,
            ..Compiled::default()
        };
        for (list, entries) in [("allow", &self.allow), ("deny", &self.deny)] {
            for e in entries {
                match Entry::parse(e) {
                    Ok(Entry::Net(n)) if list == "allow" => c.allow_nets.push(n),
                    Ok(Entry::Net(n)) => c.deny_nets.push(n),
                    Ok(Entry::Name(n)) if list == "allow" => c.allow_names.push(n),
                    Ok(Entry::Name(n)) => c.deny_names.push(n),
                    Ok(Entry::Ipv6) if list == "deny" => {}
                    Ok(Entry::Ipv6) => {
                        return Err(format!(
                            "network.allow entry {e:?} is an IPv6 address or network: sandboxes have IPv4 only"
                        ))
                    }
                    Err(why) => return Err(format!("network.{list} entry {e:?} {why}")),
                }
            }
        }
        Ok(c)
    }
}

/// An IPv4 network (`addr/prefix`, host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net4 {
    /// First address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix: u8,
}

impl Net4 {
    /// `a.b.c.d/n`.
    pub const fn new(a: [u8; 4], prefix: u8) -> Self {
        Self {
            addr: Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            prefix,
        }
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl std::fmt::Display for Net4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Net4 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("has an invalid prefix length {p:?} (0-32)"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| "is not a valid IPv4 address".to_owned())?;
        let net = Self { addr, prefix };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(format!(
                "has host bits set: write {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & net.mask())
            ));
        }
        Ok(net)
    }
}

/// Ranges no sandbox reaches unless an `allow` CIDR names them: "this"
/// network, RFC 1918, shared address space (100.64/10), loopback,
/// link-local, IETF protocol assignments, benchmarking, multicast and
/// reserved, broadcast.
pub const PRIVATE_RANGES: [Net4; 10] = [
    Net4::new([0, 0, 0, 0], 8),
    Net4::new([10, 0, 0, 0], 8),
    Net4::new([100, 64, 0, 0], 10),
    Net4::new([127, 0, 0, 0], 8),
    Net4::new([169, 254, 0, 0], 16),
    Net4::new([172, 16, 0, 0], 12),
    Net4::new([192, 0, 0, 0], 24),
    Net4::new([192, 168, 0, 0], 16),
    Net4::new([198, 18, 0, 0], 15),
    Net4::new([224, 0, 0, 0], 3),
];

/// A domain pattern: `name` matches itself, `*.name` every name below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern {
    /// Lower case, no trailing dot.
    pub name: String,
    /// `*.name`.
    pub wildcard: bool,
}

impl NamePattern {
    /// Whether `qname` (any case, trailing dot or not) matches.
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            q.len() > self.name.len()
                && q.ends_with(&self.name)
                && q.as_bytes()[q.len() - self.name.len() - 1] == b'.'
        } else {
            q == self.name
        }
    }
}

enum Entry {
    Net(Net4),
    Name(NamePattern),
    Ipv6,
}

impl Entry {
    fn parse(e: &str) -> Result<Self, &'static str> {
        let s = e.trim();
        if s.is_empty() {
            return Err("is empty");
        }
        if s.contains(':') {
            let addr = s.split_once('/').map_or(s, |(a, _)| a);
            return match addr.parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => Ok(Self::Ipv6),
                _ => Err("is not a valid domain name, IPv4 address or CIDR"),
            };
        }
        let looks_numeric = s
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '/');
        if looks_numeric {
            return s.parse::<Net4>().map(Self::Net).map_err(|_| {
                "is not a valid IPv4 address or CIDR (a.b.c.d or a.b.c.d/n with host bits clear)"
            });
        }
        let (wildcard, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.len() > 253 || !name.split('.').all(label_ok) {
            return Err("is not a valid domain name (letters, digits, '-' in dot-separated labels; a leading \"*.\" for every name below one)");
        }
        Ok(Self::Name(NamePattern { name, wildcard }))
    }
}

/// A checked policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The mode.
    pub mode: NetworkMode,
    /// `allow` CIDRs.
    pub allow_nets: Vec<Net4>,
    /// `allow` names.
    pub allow_names: Vec<NamePattern>,
    /// `deny` CIDRs.
    pub deny_nets: Vec<Net4>,
    /// `deny` names.
    pub deny_names: Vec<NamePattern>,
}

impl Compiled {
    /// Whether the resolver answers `qname`.
    pub fn resolves(&self, qname: &str) -> bool {
        let allowed = self.allow_names.iter().any(|p| p.matches(qname));
        match self.mode {
            NetworkMode::None => false,
            NetworkMode::Allowlist => allowed,
            NetworkMode::Full => allowed || !self.deny_names.iter().any(|p| p.matches(qname)),
        }
    }

    /// Whether addresses the resolver answers are added to the sandbox's
    /// allow set (only an allowlist needs them).
    pub fn learns(&self) -> bool {
        self.mode == NetworkMode::Allowlist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: NetworkMode, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            mode,
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn entries_are_names_addresses_or_cidrs_and_bad_ones_are_named() {
        let c = policy(
            NetworkMode::Allowlist,
            &["PyPI.org.", "*.github.com", "1.1.1.1", "10.1.0.0/16"],
            &["::1", "fd00::/8"],
        )
        .compile()
        .expect("valid");
        assert_eq!(c.allow_names[0].name, "pypi.org");
        assert!(c.allow_names[1].wildcard);
        assert_eq!(
            c.allow_nets,
            [Net4::new([1, 1, 1, 1], 32), Net4::new([10, 1, 0, 0], 16)]
        );
        for (bad, says) in [
            (
                "exa mple.com",
                "\"exa mple.com\" is not a valid domain name",
            ),
            ("-a.com", "not a valid domain name"),
            ("10.0.0.1/33", "not a valid IPv4 address or CIDR"),
            ("10.0.0.1/8", "not a valid IPv4 address or CIDR"),
            ("300.1.1.1", "not a valid IPv4"),
            ("2001:db8::/32", "IPv4 only"),
            ("", "is empty"),
        ] {
            let err = policy(NetworkMode::Full, &[bad], &[])
                .compile()
                .expect_err(bad);
            assert!(
                err.contains(says) && err.contains("network.allow"),
                "{bad}: {err}"
            );
        }
        let err = policy(NetworkMode::None, &["a.com"], &[])
            .compile()
            .expect_err("none");
        assert!(err.contains("\"none\" takes no"), "{err}");
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.com")).collect();
        let err = NetworkPolicy {
            mode: NetworkMode::Allowlist,
            allow: many,
            deny: vec![],
        }
        .compile()
        .expect_err("too many");
        assert!(err.contains("at most 256"), "{err}");
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        let c = policy(NetworkMode::Allowlist, &["a.test", "*.gh.io"], &[])
            .compile()
            .expect("ok");
        assert!(c.resolves("a.test") && c.resolves("A.Test."));
        assert!(!c.resolves("x.a.test") && !c.resolves("b.test"));
        assert!(c.resolves("raw.gh.io") && c.resolves("x.y.gh.io"));
        assert!(!c.resolves("gh.io") && !c.resolves("evilgh.io"));
        let full = policy(NetworkMode::Full, &["ok.bad.com"], &["*.bad.com"])
            .compile()
            .expect("ok");
        assert!(full.resolves("anything.org") && !full.resolves("x.bad.com"));
        assert!(full.resolves("ok.bad.com"), "allow wins over deny");
        assert!(!full.learns() && c.learns());
        assert!(!NetworkPolicy::default()
            .compile()
            .expect("none")
            .resolves("a.test"));
    }

    #[test]
    fn private_ranges_cover_what_they_should_and_not_public_space() {
        let private = |ip: [u8; 4]| PRIVATE_RANGES.iter().any(|n| n.contains(ip.into()));
        for ip in [
            [10, 1, 2, 3],
            [172, 31, 0, 1],
            [192, 168, 1, 1],
            [127, 0, 0, 1],
            [169, 254, 169, 254],
            [100, 100, 0, 1],
            [0, 0, 0, 0],
            [239, 1, 1, 1],
            [255, 255, 255, 255],
        ] {
            assert!(private(ip), "{ip:?}");
        }
        for ip in [
            [1, 1, 1, 1],
            [8, 8, 8, 8],
            [198, 51, 100, 10],
            [203, 0, 113, 10],
            [172, 32, 0, 1],
            [192, 0, 2, 1],
        ] {
            assert!(!private(ip), "{ip:?}");
        }
    }
}
