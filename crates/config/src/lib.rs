//! The one configuration of locale2b.
//!
//! [`Config`] has one section per layer, and each layer is given only its
//! own section:
//!
//! | section | owner | what |
//! |---|---|---|
//! | [`LogConfig`] | the binary | log filter and format |
//! | [`ServerConfig`] | `locale2b-server` | listen address, API keys, rate and body limits |
//! | [`ManagerConfig`] | `locale2b-manager` | base directory, sandbox limits and defaults, timeouts |
//! | [`VmmConfig`] | `locale2b-manager`'s backend builder | which VMM, its binaries, the jailer |
//!
//! It is built from defaults, then an optional TOML file
//! (`LOCALE2B_CONFIG_FILE`), then `LOCALE2B_*` environment variables
//! (highest precedence), then validated. Every setting keeps the flat
//! variable name it always had (`LOCALE2B_PORT`, `LOCALE2B_MAX_SANDBOXES`);
//! in the file a setting may sit in its section (`[server] port = 8080`) or
//! at the top level (`port = 8080`). [`Config::from_env`] is the only place
//! in the project that reads the environment for settings. Every field is
//! documented in `docs/configuration.md`; keep the two in step.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Largest host–guest protocol frame by default: 10 MiB (the protocol's
/// own default; repeated here so this crate depends on nothing of ours).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 10 * 1024 * 1024;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which VMM backend to use (`LOCALE2B_VMM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmChoice {
    /// Firecracker when KVM really works and Firecracker is installed, else qemu.
    #[default]
    Auto,
    /// Firecracker, even if the probe says guests will not run.
    Firecracker,
    /// QEMU (KVM when usable, else TCG).
    Qemu,
}

impl FromStr for VmmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "firecracker" | "fc" => Ok(Self::Firecracker),
            "qemu" => Ok(Self::Qemu),
            other => Err(format!(
                "unknown VMM {other:?}: expected auto, firecracker or qemu"
            )),
        }
    }
}

/// What happens to a sandbox when its lifetime ends (`LOCALE2B_ON_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Destroy it (a named workspace's data is kept, as with `DELETE`).
    #[default]
    Destroy,
    /// Pause it: memory and disk go to a snapshot, nothing is lost.
    Pause,
}

impl OnTimeout {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroy => "destroy",
            Self::Pause => "pause",
        }
    }
}

/// How a new sandbox's guest is started (`LOCALE2B_BOOT`, or `boot` in a
/// create request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    /// Boot the kernel from scratch.
    #[default]
    Cold,
    /// Clone a snapshot of a guest booted once for this image and size
    /// (built on first use); falls back to a cold boot, with a logged
    /// reason, when the VMM cannot clone or the snapshot is unusable.
    Template,
}

impl Boot {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Template => "template",
        }
    }
}

impl std::str::FromStr for Boot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cold" => Ok(Self::Cold),
            "template" => Ok(Self::Template),
            other => Err(format!("unknown boot {other:?}: expected cold or template")),
        }
    }
}

/// Smallest writable disk a workspace may have, MiB.
pub const MIN_DISK_SIZE_MB: u64 = 64;

/// What a create or resume does when capacity is exhausted
/// (`LOCALE2B_EVICTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Eviction {
    /// Pause the least recently used running sandbox that has no call or
    /// stream in flight, then admit (nothing is lost).
    #[default]
    #[serde(rename = "pause-lru")]
    PauseLru,
    /// Refuse with 503 and `Retry-After`.
    #[serde(rename = "none")]
    None,
}

impl Eviction {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PauseLru => "pause-lru",
            Self::None => "none",
        }
    }
}

/// Whether VMMs are put in cgroups (`LOCALE2B_CGROUPS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Use cgroup v2 when its controllers are available, else the v1
    /// hierarchies; run without limits (with a warning) when neither works.
    #[default]
    Auto,
    /// Never create cgroups.
    Off,
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret value; use only where it is needed (comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Logging (read by the binary before anything else starts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `locale2b_manager=debug,info`.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// The HTTP server: where it listens, who may call it, how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub host: IpAddr,
    /// TCP port (0 = any free port, printed at start).
    pub port: u16,
    /// A single API key. When neither this nor `api_keys_file` is set, a key
    /// is generated on first start and stored 0600 in `<base_dir>/api-key`.
    pub api_key: Option<Secret>,
    /// File of API keys, one per line: `name:sha256:<hex>` (or `name:key`,
    /// or `key`) and optional `admin=true max_sandboxes=N max_memory_mb=N`;
    /// `#` comments. Re-read when it changes (no restart to add or revoke).
    pub api_keys_file: Option<PathBuf>,
    /// An extra header that carries the API key, besides `X-API-Key` and
    /// `Authorization: Bearer` (CompyMac's client lets its users rename it).
    pub api_key_header: Option<String>,
    /// Requests per second allowed per API key (burst = 2x); 0 = unlimited.
    pub rate_limit_per_sec: u32,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest multipart upload.
    pub max_upload_bytes: u64,
    /// Swagger UI / ReDoc assets; `<base_dir>/ui` when unset.
    pub ui_dir: Option<PathBuf>,
    /// Serve the E2B-compatible API (control plane under `/e2b`, envd
    /// requests by their `E2b-Sandbox-Id` header).
    pub e2b: bool,
    /// Let E2B clients create sandboxes with `secure: false`, whose envd
    /// needs no access token (anyone who can reach the server and knows
    /// the sandbox id can then run commands in it).
    pub e2b_allow_insecure: bool,
    /// Serve `GET /metrics` without an API key (for a scraper on a trusted
    /// network); behind the key otherwise.
    pub metrics_public: bool,
    /// Domain of Host-header routing to exposed ports: a request to the
    /// server with `Host: <port>-<sandbox_id>.<ports_domain>` goes to that
    /// exposed port, or any port of a sandbox created through the E2B API
    /// (names under `localhost` resolve to the loopback in browsers and
    /// curl). Empty: no Host-header routing.
    pub ports_domain: String,
    /// Names of API keys (comma-separated) that see every sandbox and
    /// workspace (as does `admin=true` in the keys file); any other key
    /// sees only what it created.
    pub admin_keys: String,
    /// The audit log (JSON lines: every mutating call and every failed
    /// authentication); default `<base_dir>/audit.log`.
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated, MiB.
    pub audit_log_max_mb: u64,
    /// Rotated audit logs kept (`audit.log.1` …).
    pub audit_log_keep: u32,
    /// Failed authentications a source address may have per minute before
    /// all its requests are refused (429) for the rest of that minute;
    /// 0 = no limit.
    pub auth_failures_per_min: u32,
    /// Sandboxes (any state) one API key may have; 0 = no limit. A key's
    /// `max_sandboxes=` in the keys file overrides it.
    pub key_max_sandboxes: u32,
    /// Guest RAM one API key's running sandboxes may hold together, MiB;
    /// 0 = no limit. A key's `max_memory_mb=` overrides it.
    pub key_max_memory_mb: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            api_key: None,
            api_keys_file: None,
            api_key_header: None,
            rate_limit_per_sec: 100,
            max_body_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 1024 * 1024 * 1024,
            ui_dir: None,
            e2b: true,
            e2b_allow_insecure: false,
            metrics_public: false,
            ports_domain: "localhost".into(),
            admin_keys: String::new(),
            audit_log: None,
            audit_log_max_mb: 64,
            audit_log_keep: 5,
            auth_failures_per_min: 20,
            key_max_sandboxes: 0,
            key_max_memory_mb: 0,
        }
    }
}

/// The sandbox manager: state on disk, limits and defaults of sandboxes,
/// timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// Root of all state (images, sandboxes, workspaces, cache, API key).
    pub base_dir: PathBuf,
    /// Build cache for guest images; `<base_dir>/cache` when unset.
    pub cache_dir: Option<PathBuf>,
    /// Template used when a request names none.
    pub default_template: String,

    /// Maximum concurrent sandboxes (running or starting).
    pub max_sandboxes: u32,
    /// Guest RAM budget over all running sandboxes, MiB; 0 = host total
    /// memory minus `host_reserve_mb`.
    pub memory_budget_mb: u64,
    /// RAM kept for the host when the budget is derived from host memory.
    pub host_reserve_mb: u64,
    /// Admit against what active sandboxes measurably cost the host (the
    /// PSS of their VMMs: memory shared between clones counted once)
    /// instead of the sum of their nominal guest RAM. Off by default: the
    /// budget then caps the nominal sum, which is safe whatever the guests
    /// do later.
    pub memory_overcommit: bool,
    /// Default guest RAM.
    pub default_memory_mb: u32,
    /// Smallest guest RAM a request may ask for.
    pub min_memory_mb: u32,
    /// Largest guest RAM a request may ask for.
    pub max_memory_mb: u32,
    /// Default vCPUs.
    pub default_vcpu: u8,
    /// Largest vCPU count a request may ask for.
    pub max_vcpu: u8,
    /// Size of a new workspace's sparse writable disk when the create
    /// names none.
    pub disk_size_mb: u64,
    /// Largest disk a create may ask for.
    pub max_disk_size_mb: u64,
    /// Free space the host's disk must keep beyond a new workspace's disk
    /// size for a create to be admitted, MiB.
    pub disk_free_margin_mb: u64,

    /// Seconds from VM start until the agent must answer `ping`.
    pub boot_timeout_sec: u64,
    /// Default timeout of one exec call when the request names none.
    pub exec_timeout_sec: u64,
    /// Largest timeout an exec request may ask for.
    pub max_exec_timeout_sec: u64,
    /// A running sandbox with no API activity and no attached stream for
    /// this long is paused (nothing is lost); 0 = never. A create may set
    /// its own.
    pub idle_timeout_sec: u64,
    /// Whether a call to a paused sandbox resumes it first, for creates
    /// that do not say.
    pub auto_resume: bool,
    /// What a create or resume does when capacity is exhausted.
    pub eviction: Eviction,
    /// How long a paused sandbox is kept before the reaper destroys it
    /// (a named workspace's disk is kept, as with `DELETE`); 0 = forever.
    pub paused_retention_sec: u64,
    /// Period of the reaper pass (orphaned VMMs, run directories, sockets,
    /// cgroups, stale snapshots, paused sandboxes past retention).
    pub reaper_interval_sec: u64,
    /// Whether each VMM runs in its own cgroup with memory, CPU and pids
    /// limits.
    pub cgroups: CgroupMode,
    /// Memory a VMM may use beyond its guest RAM before its cgroup limit
    /// (device emulation, TCG translation cache), MiB.
    pub cgroup_memory_overhead_mb: u64,
    /// CPU a VMM may use beyond one core per vCPU (its I/O and main-loop
    /// threads), in percent of a core.
    pub cgroup_cpu_extra_pct: u32,
    /// Most tasks (processes and threads) of one VMM.
    pub cgroup_pids_max: u32,
    /// Lifetime of a sandbox whose create names none, seconds from the
    /// create (or resume); 0 = no end.
    pub sandbox_timeout_sec: u64,
    /// Longest lifetime a create or a timeout change may ask for, seconds.
    pub max_sandbox_timeout_sec: u64,
    /// What happens at the end of a lifetime when the create does not say.
    pub on_timeout: OnTimeout,
    /// How a new sandbox starts when the create does not say.
    pub boot: Boot,
    /// Grace period between asking a guest to power off and killing it.
    pub shutdown_grace_sec: u64,
    /// How long pause and destroy wait for calls already running in the
    /// guest (exec, file transfers) before they go ahead and fail them
    /// with a 409 naming the reason.
    pub settle_timeout_sec: u64,
    /// Testing only: the name of a point inside create, pause, resume or
    /// destroy (see `docs/recovery.md`) where the server kills itself with
    /// SIGKILL, to test crash consistency. Never set it in production.
    pub crash_at: Option<String>,
    /// Period of the VM health check.
    pub health_check_interval_sec: u64,
    /// Size at which a sandbox's console log (its guest's serial output)
    /// is cut, KiB: the newer half goes to `console.log.1`, the log starts
    /// again empty. Checked with the health check; 0 = never cut.
    pub console_log_max_kb: u64,

    /// Largest host–guest protocol frame.
    pub max_frame_bytes: usize,
    /// How long a sandbox keeps an exited background process (its exit
    /// code and output tail) for late readers.
    pub process_retention_sec: u64,
    /// Environment variables set in every sandbox.
    pub sandbox_env: BTreeMap<String, String>,
    /// Address the listeners of exposed ports bind (each exposed port gets
    /// a free TCP port there). `0.0.0.0` makes them reachable from the LAN.
    pub ports_host: IpAddr,
    /// Host name the URLs of exposed ports use; unset: `ports_host`, or
    /// this machine's host name when that is `0.0.0.0`/`::`.
    pub public_host: Option<String>,
    /// Most ports one sandbox may have exposed at once.
    pub max_exposed_ports: u32,
    /// Addresses for the veth pairs of networked sandboxes (a /30 each,
    /// IPv4 CIDR).
    pub network_pool: String,
    /// The network namespace (a name under `/run/netns`) sandboxes' traffic
    /// leaves through; unset = the server's own.
    pub network_uplink_netns: Option<String>,
    /// The DNS server sandbox resolvers ask (IPv4); unset = the first IPv4
    /// `nameserver` of `/etc/resolv.conf`.
    pub network_dns_upstream: Option<String>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            base_dir: PathBuf::from("/var/lib/firecracker-workspaces"),
            cache_dir: None,
            default_template: "default".into(),
            max_sandboxes: 20,
            memory_budget_mb: 0,
            memory_overcommit: false,
            host_reserve_mb: 3072,
            default_memory_mb: 512,
            min_memory_mb: 256,
            max_memory_mb: 2048,
            default_vcpu: 1,
            max_vcpu: 4,
            disk_size_mb: 10 * 1024,
            max_disk_size_mb: 100 * 1024,
            disk_free_margin_mb: 1024,
            boot_timeout_sec: 30,
            exec_timeout_sec: 300,
            max_exec_timeout_sec: 3600,
            idle_timeout_sec: 3600,
            auto_resume: false,
            eviction: Eviction::PauseLru,
            paused_retention_sec: 0,
            reaper_interval_sec: 60,
            cgroups: CgroupMode::Auto,
            cgroup_memory_overhead_mb: 384,
            cgroup_cpu_extra_pct: 50,
            cgroup_pids_max: 512,
            sandbox_timeout_sec: 0,
            max_sandbox_timeout_sec: 7 * 24 * 3600,
            on_timeout: OnTimeout::Destroy,
            boot: Boot::Cold,
            shutdown_grace_sec: 5,
            settle_timeout_sec: 5,
            crash_at: None,
            health_check_interval_sec: 5,
            console_log_max_kb: 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            process_retention_sec: 600,
            sandbox_env: BTreeMap::new(),
            ports_host: IpAddr::from([127, 0, 0, 1]),
            public_host: None,
            max_exposed_ports: 32,
            network_pool: "10.213.0.0/16".into(),
            network_uplink_netns: None,
            network_dns_upstream: None,
        }
    }
}

impl ManagerConfig {
    /// The image build cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.base_dir.join("cache"))
    }

    /// Default exec timeout.
    pub fn exec_timeout(&self) -> Duration {
        Duration::from_secs(self.exec_timeout_sec)
    }

    /// Largest exec timeout.
    pub fn max_exec_timeout(&self) -> Duration {
        Duration::from_secs(self.max_exec_timeout_sec)
    }

    /// Boot timeout.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_sec)
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_sec)
    }

    /// How long pause and destroy wait for running guest calls.
    pub fn settle_timeout(&self) -> Duration {
        Duration::from_secs(self.settle_timeout_sec)
    }

    /// Checks the section's own consistency.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.max_sandboxes == 0 {
            return bad("max_sandboxes (LOCALE2B_MAX_SANDBOXES) must be at least 1".into());
        }
        if self.min_memory_mb < 64 {
            return bad("min_memory_mb must be at least 64".into());
        }
        if !(self.min_memory_mb <= self.default_memory_mb
            && self.default_memory_mb <= self.max_memory_mb)
        {
            return bad(format!(
                "memory limits must satisfy min_memory_mb ({}) <= default_memory_mb ({}) <= max_memory_mb ({})",
                self.min_memory_mb, self.default_memory_mb, self.max_memory_mb
            ));
        }
        if self.default_vcpu == 0 || self.default_vcpu > self.max_vcpu {
            return bad(format!(
                "vCPU limits must satisfy 1 <= default_vcpu ({}) <= max_vcpu ({})",
                self.default_vcpu, self.max_vcpu
            ));
        }
        if self.boot_timeout_sec == 0 || self.exec_timeout_sec == 0 {
            return bad("boot_timeout_sec and exec_timeout_sec must be positive".into());
        }
        if self.exec_timeout_sec > self.max_exec_timeout_sec {
            return bad("exec_timeout_sec must not exceed max_exec_timeout_sec".into());
        }
        if self.max_sandbox_timeout_sec == 0 {
            return bad("max_sandbox_timeout_sec must be positive".into());
        }
        if self.sandbox_timeout_sec > self.max_sandbox_timeout_sec {
            return bad(format!(
                "sandbox_timeout_sec ({}) must not exceed max_sandbox_timeout_sec ({})",
                self.sandbox_timeout_sec, self.max_sandbox_timeout_sec
            ));
        }
        if !self.base_dir.is_absolute() {
            return bad(format!(
                "base_dir {} must be an absolute path",
                self.base_dir.display()
            ));
        }
        // Unix socket paths are limited to 107 bytes: base + /sandboxes/<id>/serial.sock.
        if self.base_dir.as_os_str().len() > 60 {
            return bad(format!(
                "base_dir {} is too long ({} bytes): Unix socket paths under it would exceed the 107-byte limit; use a path of at most 60 bytes",
                self.base_dir.display(),
                self.base_dir.as_os_str().len()
            ));
        }
        if self.disk_size_mb < MIN_DISK_SIZE_MB || self.disk_size_mb > self.max_disk_size_mb {
            return bad(format!(
                "disk sizes must satisfy {MIN_DISK_SIZE_MB} <= disk_size_mb ({}) <= max_disk_size_mb ({})",
                self.disk_size_mb, self.max_disk_size_mb
            ));
        }
        if self.reaper_interval_sec == 0 {
            return bad("reaper_interval_sec must be positive".into());
        }
        if self.cgroup_pids_max < 16 {
            return bad("cgroup_pids_max must be at least 16 (a VMM runs several threads)".into());
        }
        if self.max_frame_bytes < 64 * 1024 {
            return bad("max_frame_bytes must be at least 65536".into());
        }
        if !is_valid_name(&self.default_template) {
            return bad(format!(
                "default_template {:?} is not a valid name (1-64 of [A-Za-z0-9._-], starting with a letter or digit)",
                self.default_template
            ));
        }
        let pool_ok = self.network_pool.split_once('/').is_some_and(|(a, p)| {
            a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 29)
        });
        if !pool_ok {
            return bad(format!(
                "network_pool {:?} must be an IPv4 CIDR with a prefix of at most /29, e.g. 10.213.0.0/16",
                self.network_pool
            ));
        }
        if let Some(up) = &self.network_dns_upstream {
            if up.parse::<std::net::Ipv4Addr>().is_err() {
                return bad(format!(
                    "network_dns_upstream {up:?} must be an IPv4 address"
                ));
            }
        }
        if let Some(ns) = &self.network_uplink_netns {
            if !is_valid_name(ns) {
                return bad(format!(
                    "network_uplink_netns {ns:?} must be the name of a network namespace under /run/netns"
                ));
            }
        }
        for name in self.sandbox_env.keys() {
            if !is_env_name(name) {
                return bad(format!(
                    "sandbox_env has an invalid variable name {name:?}: use letters, digits and '_', not starting with a digit"
                ));
            }
        }
        Ok(())
    }
}

/// The VMM backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmmConfig {
    /// VMM backend.
    pub vmm: VmmChoice,
    /// Firecracker binary.
    pub firecracker_bin: PathBuf,
    /// Jailer binary (used when `use_jailer`).
    pub jailer_bin: PathBuf,
    /// Run Firecracker under the jailer.
    pub use_jailer: bool,
    /// User id the jailer drops Firecracker to.
    pub jailer_uid: u32,
    /// Group id the jailer drops Firecracker to.
    pub jailer_gid: u32,
    /// Base directory of the jailer's chroots.
    pub jailer_chroot_base: PathBuf,
    /// QEMU binary for the qemu backend.
    pub qemu_bin: PathBuf,
    /// QEMU's TCG translation cache per VMM, MiB (unused under KVM).
    pub qemu_tb_size_mb: u32,
}

impl Default for VmmConfig {
    fn default() -> Self {
        Self {
            vmm: VmmChoice::Auto,
            firecracker_bin: PathBuf::from("/usr/bin/firecracker"),
            jailer_bin: PathBuf::from("/usr/bin/jailer"),
            use_jailer: false,
            jailer_uid: 65534,
            jailer_gid: 65534,
            jailer_chroot_base: PathBuf::from("/srv/jailer"),
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            qemu_tb_size_mb: 64,
        }
    }
}

/// Every setting, one section per layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// The sandbox manager.
    pub manager: ManagerConfig,
    /// The VMM backend.
    pub vmm: VmmConfig,
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`].
    #[error("config file {path} is invalid: {message}")]
    ParseFile {
        /// Path.
        path: PathBuf,
        /// Parser message (names the key).
        message: String,
    },
    /// An environment variable has a value of the wrong type.
    #[error("{var}={value:?} is invalid: {reason}")]
    Env {
        /// Variable name.
        var: String,
        /// Its value.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// The values are inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Environment variables with our prefix that are not settings of the server
/// (used by tests, tools or clients) and must not be reported as unknown.
const NON_SETTING_VARS: &[&str] = &[
    "LOCALE2B_CONFIG_FILE",
    "LOCALE2B_BASE_URL",
    "LOCALE2B_CONTEXT",
    "LOCALE2B_CLI_CONFIG",
    "LOCALE2B_TEST_IMAGE_DIR",
    "LOCALE2B_REQUIRE_E2E",
    "LOCALE2B_SKIP_LOG",
    "LOCALE2B_E2E",
    "LOCALE2B_BENCH_QUICK",
    "LOCALE2B_RECIPE_DIR",
    "LOCALE2B_CYCLES",
    "LOCALE2B_UPDATE_OPENAPI",
    "LOCALE2B_AGENT_BIN",
    "LOCALE2B_AGENT_LOG",
];

/// The section names, as in the file.
const SECTIONS: &[&str] = &["log", "server", "manager", "vmm"];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Map,
}

/// Every setting: its key (= variable name without `LOCALE2B_`, lower
/// case), its section and the type its variable is parsed as.
const SETTINGS: &[(&str, &str, Kind)] = {
    use Kind::*;
    &[
        ("log_level", "log", Str),
        ("log_format", "log", Str),
        ("host", "server", Str),
        ("port", "server", Int),
        ("api_key", "server", Str),
        ("api_keys_file", "server", Str),
        ("api_key_header", "server", Str),
        ("rate_limit_per_sec", "server", Int),
        ("max_body_bytes", "server", Int),
        ("max_upload_bytes", "server", Int),
        ("ui_dir", "server", Str),
        ("e2b", "server", Bool),
        ("e2b_allow_insecure", "server", Bool),
        ("metrics_public", "server", Bool),
        ("base_dir", "manager", Str),
        ("cache_dir", "manager", Str),
        ("default_template", "manager", Str),
        ("max_sandboxes", "manager", Int),
        ("memory_budget_mb", "manager", Int),
        ("memory_overcommit", "manager", Bool),
        ("host_reserve_mb", "manager", Int),
        ("default_memory_mb", "manager", Int),
        ("min_memory_mb", "manager", Int),
        ("max_memory_mb", "manager", Int),
        ("default_vcpu", "manager", Int),
        ("max_vcpu", "manager", Int),
        ("disk_size_mb", "manager", Int),
        ("max_disk_size_mb", "manager", Int),
        ("disk_free_margin_mb", "manager", Int),
        ("boot_timeout_sec", "manager", Int),
        ("exec_timeout_sec", "manager", Int),
        ("max_exec_timeout_sec", "manager", Int),
        ("idle_timeout_sec", "manager", Int),
        ("auto_resume", "manager", Bool),
        ("eviction", "manager", Str),
        ("paused_retention_sec", "manager", Int),
        ("reaper_interval_sec", "manager", Int),
        ("cgroups", "manager", Str),
        ("cgroup_memory_overhead_mb", "manager", Int),
        ("cgroup_cpu_extra_pct", "manager", Int),
        ("cgroup_pids_max", "manager", Int),
        ("sandbox_timeout_sec", "manager", Int),
        ("max_sandbox_timeout_sec", "manager", Int),
        ("on_timeout", "manager", Str),
        ("boot", "manager", Str),
        ("shutdown_grace_sec", "manager", Int),
        ("settle_timeout_sec", "manager", Int),
        ("crash_at", "manager", Str),
        ("health_check_interval_sec", "manager", Int),
        ("console_log_max_kb", "manager", Int),
        ("max_frame_bytes", "manager", Int),
        ("process_retention_sec", "manager", Int),
        ("sandbox_env", "manager", Map),
        ("ports_host", "manager", Str),
        ("public_host", "manager", Str),
        ("max_exposed_ports", "manager", Int),
        ("network_pool", "manager", Str),
        ("network_uplink_netns", "manager", Str),
        ("network_dns_upstream", "manager", Str),
        ("ports_domain", "server", Str),
        ("admin_keys", "server", Str),
        ("audit_log", "server", Str),
        ("audit_log_max_mb", "server", Int),
        ("audit_log_keep", "server", Int),
        ("auth_failures_per_min", "server", Int),
        ("key_max_sandboxes", "server", Int),
        ("key_max_memory_mb", "server", Int),
        ("vmm", "vmm", Str),
        ("firecracker_bin", "vmm", Str),
        ("jailer_bin", "vmm", Str),
        ("use_jailer", "vmm", Bool),
        ("jailer_uid", "vmm", Int),
        ("jailer_gid", "vmm", Int),
        ("jailer_chroot_base", "vmm", Str),
        ("qemu_bin", "vmm", Str),
        ("qemu_tb_size_mb", "vmm", Int),
    ]
};

fn setting(key: &str) -> Option<(&'static str, Kind)> {
    SETTINGS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, section, kind)| (*section, *kind))
}

impl Config {
    /// Reads `LOCALE2B_CONFIG_FILE` (if set) and all `LOCALE2B_*` variables
    /// from the process environment and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable, key or value to fix.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("LOCALE2B_"))
            .collect();
        Self::from_vars(&vars)
    }

    /// Like [`Config::from_env`] but from an explicit variable map (tests).
    ///
    /// # Errors
    /// See [`Config::from_env`].
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = match vars.get("LOCALE2B_CONFIG_FILE") {
            Some(path) => read_file_table(Path::new(path))?,
            None => toml::Table::new(),
        };
        for (var, value) in vars {
            if NON_SETTING_VARS.contains(&var.as_str()) {
                continue;
            }
            let key = var.trim_start_matches("LOCALE2B_").to_ascii_lowercase();
            let Some((section, kind)) = setting(&key) else {
                // Variables of other tools may share our prefix; only warn.
                tracing::warn!(var = %var, "ignoring unknown LOCALE2B_ variable");
                continue;
            };
            let parsed = parse_env_value(kind, value).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                value: if key.contains("key") && key != "api_key_header" {
                    "<redacted>".into()
                } else {
                    value.clone()
                },
                reason,
            })?;
            section_table(&mut table, section).insert(key, parsed);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section and what spans sections.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.manager.validate()?;
        if self.server.audit_log_max_mb == 0 {
            return Err(ConfigError::Invalid(
                "audit_log_max_mb must be at least 1 (MiB)".into(),
            ));
        }
        if let Some(h) = &self.server.api_key_header {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "api_key_header {h:?} is not a valid HTTP header name (letters, digits, '-', '_')"
                )));
            }
        }
        Ok(())
    }

    /// The audit log: `server.audit_log`, else `<base_dir>/audit.log`.
    pub fn audit_log(&self) -> PathBuf {
        self.server
            .audit_log
            .clone()
            .unwrap_or_else(|| self.manager.base_dir.join("audit.log"))
    }

    /// The UI asset directory: `server.ui_dir`, else `<base_dir>/ui`.
    pub fn ui_dir(&self) -> PathBuf {
        self.server
            .ui_dir
            .clone()
            .unwrap_or_else(|| self.manager.base_dir.join("ui"))
    }
}

/// Whether `s` is a valid template or id name: 1–64 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` is a POSIX environment variable name: letters, digits and
/// `_`, not starting with a digit.
pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn section_table<'a>(table: &'a mut toml::Table, section: &str) -> &'a mut toml::Table {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    match entry {
        toml::Value::Table(t) => t,
        _ => unreachable!("just made a table"),
    }
}

fn parse_env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
    let v = value.trim();
    match kind {
        Kind::Str => Ok(toml::Value::String(v.to_owned())),
        Kind::Int => v
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "expected a whole number".to_owned()),
        Kind::Bool => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "0" | "false" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err("expected true or false".to_owned()),
        },
        Kind::Map => {
            let mut t = toml::Table::new();
            for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, val) = pair.split_once('=').ok_or_else(|| {
                    format!("expected KEY=VALUE pairs separated by commas, got {pair:?}")
                })?;
                t.insert(k.trim().to_owned(), toml::Value::String(val.to_owned()));
            }
            Ok(toml::Value::Table(t))
        }
    }
}

/// Reads the file and moves every top-level setting into its section, so
/// that flat files (`port = 8080`) and sectioned ones (`[server]`) both work.
fn read_file_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let parse_err = |message: String| ConfigError::ParseFile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let raw: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
    let mut table = toml::Table::new();
    for (key, value) in raw {
        // `vmm` is both a section and a setting (`vmm = "qemu"`).
        if SECTIONS.contains(&key.as_str()) && value.is_table() {
            let toml::Value::Table(inner) = value else {
                return Err(parse_err(format!("[{key}] must be a table")));
            };
            let target = section_table(&mut table, &key);
            for (k, v) in inner {
                if let Some((owner, _)) = setting(&k) {
                    if owner != key {
                        return Err(parse_err(format!("{k} belongs in [{owner}], not [{key}]")));
                    }
                }
                target.insert(k, v);
            }
        } else if let Some((section, _)) = setting(&key) {
            section_table(&mut table, section).insert(key, value);
        } else {
            return Err(parse_err(format!(
                "unknown setting `{key}` (see docs/configuration.md for every setting)"
            )));
        }
    }
    // Type-check the file alone so its errors name the file.
    toml::Value::Table(table.clone())
        .try_into::<Config>()
        .map_err(|e| parse_err(e.message().to_owned()))?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_vars(&BTreeMap::new()).unwrap();
        assert_eq!(c.manager.max_sandboxes, 20);
        assert_eq!(c.manager.default_memory_mb, 512);
        assert_eq!(c.manager.min_memory_mb, 256, "the plan's minimum guest RAM");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "max_sandboxes = 3\nport = 9000\nvmm = \"firecracker\"\n",
        )
        .unwrap();
        let c = Config::from_vars(&vars(&[
            ("LOCALE2B_CONFIG_FILE", file.to_str().unwrap()),
            ("LOCALE2B_PORT", "9100"),
            ("LOCALE2B_VMM", "qemu"),
            ("LOCALE2B_USE_JAILER", "yes"),
            ("LOCALE2B_SANDBOX_ENV", "A=1,B=x=y"),
            ("LOCALE2B_API_KEY_HEADER", "X-Custom-Key"),
        ]))
        .unwrap();
        assert_eq!(c.manager.max_sandboxes, 3);
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.vmm.vmm, VmmChoice::Qemu);
        assert!(c.vmm.use_jailer);
        assert_eq!(
            c.manager.sandbox_env.get("B").map(String::as_str),
            Some("x=y")
        );
        assert_eq!(c.server.api_key_header.as_deref(), Some("X-Custom-Key"));
    }

    #[test]
    fn sectioned_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nport = 9001\n[manager]\nmax_sandboxes = 4\n[manager.sandbox_env]\nA = \"1\"\n[vmm]\nvmm = \"qemu\"\n",
        )
        .unwrap();
        let c =
            Config::from_vars(&vars(&[("LOCALE2B_CONFIG_FILE", file.to_str().unwrap())])).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(c.manager.max_sandboxes, 4);
        assert_eq!(c.manager.sandbox_env["A"], "1");
        assert_eq!(c.vmm.vmm, VmmChoice::Qemu);
        std::fs::write(&file, "[server]\nmax_sandboxes = 4\n").unwrap();
        let err = Config::from_vars(&vars(&[("LOCALE2B_CONFIG_FILE", file.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs in [manager]"), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_vars(&vars(&[("LOCALE2B_MAX_SANDBOXES", "many")])).unwrap_err();
        assert!(err.to_string().contains("LOCALE2B_MAX_SANDBOXES"), "{err}");
        let err = Config::from_vars(&vars(&[("LOCALE2B_VMM", "xen")])).unwrap_err();
        assert!(err.to_string().contains("xen"), "{err}");
        let err = Config::from_vars(&vars(&[("LOCALE2B_DEFAULT_MEMORY_MB", "4096")])).unwrap_err();
        assert!(err.to_string().contains("max_memory_mb"), "{err}");
        let err = Config::from_vars(&vars(&[("LOCALE2B_BASE_DIR", "relative")])).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err =
            Config::from_vars(&vars(&[("LOCALE2B_API_KEY_HEADER", "bad header")])).unwrap_err();
        assert!(err.to_string().contains("api_key_header"), "{err}");
        let err = Config::from_vars(&vars(&[("LOCALE2B_SANDBOX_ENV", "A=B=1,9X=2")])).unwrap_err();
        assert!(err.to_string().contains("9X"), "{err}");
        let err = Config::from_vars(&vars(&[("LOCALE2B_ON_TIMEOUT", "explode")])).unwrap_err();
        assert!(err.to_string().contains("destroy"), "{err}");
        let err = Config::from_vars(&vars(&[
            ("LOCALE2B_SANDBOX_TIMEOUT_SEC", "100"),
            ("LOCALE2B_MAX_SANDBOX_TIMEOUT_SEC", "10"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("max_sandbox_timeout_sec"), "{err}");
    }

    #[test]
    fn lifetimes_and_e2b_settings_from_the_environment() {
        let c = Config::from_vars(&vars(&[
            ("LOCALE2B_ON_TIMEOUT", "pause"),
            ("LOCALE2B_SANDBOX_TIMEOUT_SEC", "600"),
            ("LOCALE2B_E2B", "false"),
            ("LOCALE2B_E2B_ALLOW_INSECURE", "true"),
        ]))
        .unwrap();
        assert_eq!(c.manager.on_timeout, OnTimeout::Pause);
        assert_eq!(c.manager.sandbox_timeout_sec, 600);
        assert!(!c.server.e2b && c.server.e2b_allow_insecure);
        let d = Config::default();
        assert_eq!(d.manager.on_timeout, OnTimeout::Destroy);
        assert_eq!(d.manager.sandbox_timeout_sec, 0, "no end unless asked");
        assert!(d.server.e2b && !d.server.e2b_allow_insecure);
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "max_sandboxez = 3\n").unwrap();
        let err = Config::from_vars(&vars(&[("LOCALE2B_CONFIG_FILE", file.to_str().unwrap())]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("c.toml") && msg.contains("max_sandboxez"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::from_vars(&vars(&[("LOCALE2B_API_KEY", "hunter2")])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.server.api_key.unwrap().expose(), "hunter2");
    }

    #[test]
    fn every_setting_is_in_its_section() {
        // Each key of the table must deserialize into the section it names.
        for (key, section, kind) in SETTINGS {
            let value = match kind {
                Kind::Str => match *key {
                    "host" | "ports_host" => toml::Value::String("127.0.0.1".into()),
                    "log_format" => toml::Value::String("json".into()),
                    "vmm" => toml::Value::String("qemu".into()),
                    "base_dir" => toml::Value::String("/tmp/x".into()),
                    "default_template" => toml::Value::String("default".into()),
                    "on_timeout" => toml::Value::String("pause".into()),
                    "boot" => toml::Value::String("template".into()),
                    "eviction" => toml::Value::String("none".into()),
                    "cgroups" => toml::Value::String("off".into()),
                    _ => toml::Value::String("x".into()),
                },
                Kind::Int => toml::Value::Integer(1),
                Kind::Bool => toml::Value::Boolean(true),
                Kind::Map => toml::Value::Table(toml::Table::new()),
            };
            let mut table = toml::Table::new();
            section_table(&mut table, section).insert((*key).to_owned(), value);
            let parsed: Result<Config, _> = toml::Value::Table(table).try_into();
            assert!(parsed.is_ok(), "{key} in [{section}]: {parsed:?}");
        }
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("PATH"));
        assert!(is_env_name("_X1"));
        assert!(!is_env_name("A=B"));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("A B"));
    }
}
