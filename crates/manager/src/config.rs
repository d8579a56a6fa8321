//! The one configuration struct of locale2b.
//!
//! Built from defaults, then an optional TOML file (`LOCALE2B_CONFIG_FILE`),
//! then `LOCALE2B_*` environment variables (highest precedence), then
//! validated. [`Config::from_env`] is the only place in the project that reads
//! the environment for settings. Every field is documented in
//! `docs/configuration.md`; keep the two in step.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use locale2b_vmm::probe::VmmPreference as VmmChoice;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A secret string whose `Debug` and `Display` never show the value.
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

/// All settings. Field names match the environment variables without the
/// `LOCALE2B_` prefix, lower-cased (`max_sandboxes` = `LOCALE2B_MAX_SANDBOXES`),
/// and the keys of the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    pub host: IpAddr,
    /// TCP port (0 = any free port, printed at start).
    pub port: u16,
    /// `tracing` filter, e.g. `info` or `locale2b_manager=debug,info`.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,

    /// Maximum concurrent sandboxes (running or starting).
    pub max_sandboxes: u32,
    /// Guest RAM budget over all running sandboxes, MiB; 0 = host total
    /// memory minus `host_reserve_mb`.
    pub memory_budget_mb: u64,
    /// RAM kept for the host when the budget is derived from host memory.
    pub host_reserve_mb: u64,
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
    /// Size of each workspace's sparse writable disk.
    pub disk_size_mb: u64,

    /// Seconds from VM start until the agent must answer `ping`.
    pub boot_timeout_sec: u64,
    /// Default timeout of one exec call when the request names none.
    pub exec_timeout_sec: u64,
    /// Largest timeout an exec request may ask for.
    pub max_exec_timeout_sec: u64,
    /// Sandboxes untouched this long are paused (0 = never).
    pub idle_timeout_sec: u64,
    /// Grace period between asking a guest to power off and killing it.
    pub shutdown_grace_sec: u64,
    /// Period of the VM health check.
    pub health_check_interval_sec: u64,

    /// Root of all state (images, sandboxes, workspaces, cache, API key).
    pub base_dir: PathBuf,
    /// Build cache for guest images; `<base_dir>/cache` when unset.
    pub cache_dir: Option<PathBuf>,
    /// Template used when a request names none.
    pub default_template: String,
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

    /// A single API key. When neither this nor `api_keys_file` is set, a key
    /// is generated on first start and stored 0600 in `<base_dir>/api-key`.
    pub api_key: Option<Secret>,
    /// File with one API key per line (`name:key` or `key`); `#` comments.
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second allowed per API key (burst = 2x); 0 = unlimited.
    pub rate_limit_per_sec: u32,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest multipart upload.
    pub max_upload_bytes: u64,
    /// Largest host–guest protocol frame.
    pub max_frame_bytes: usize,
    /// Environment variables set in every sandbox.
    pub sandbox_env: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            max_sandboxes: 20,
            memory_budget_mb: 0,
            host_reserve_mb: 3072,
            default_memory_mb: 512,
            min_memory_mb: 128,
            max_memory_mb: 2048,
            default_vcpu: 1,
            max_vcpu: 4,
            disk_size_mb: 10 * 1024,
            boot_timeout_sec: 30,
            exec_timeout_sec: 300,
            max_exec_timeout_sec: 3600,
            idle_timeout_sec: 0,
            shutdown_grace_sec: 5,
            health_check_interval_sec: 5,
            base_dir: PathBuf::from("/var/lib/firecracker-workspaces"),
            cache_dir: None,
            default_template: "default".into(),
            vmm: VmmChoice::Auto,
            firecracker_bin: PathBuf::from("/usr/bin/firecracker"),
            jailer_bin: PathBuf::from("/usr/bin/jailer"),
            use_jailer: false,
            jailer_uid: 65534,
            jailer_gid: 65534,
            jailer_chroot_base: PathBuf::from("/srv/jailer"),
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            api_key: None,
            api_keys_file: None,
            rate_limit_per_sec: 100,
            max_body_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 1024 * 1024 * 1024,
            max_frame_bytes: locale2b_protocol::DEFAULT_MAX_FRAME,
            sandbox_env: BTreeMap::new(),
        }
    }
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
    "LOCALE2B_API_KEY_HEADER",
    "LOCALE2B_TEST_IMAGE_DIR",
    "LOCALE2B_REQUIRE_E2E",
    "LOCALE2B_E2E",
    "LOCALE2B_BENCH_QUICK",
    "LOCALE2B_RECIPE_DIR",
    "LOCALE2B_CYCLES",
    "LOCALE2B_UPDATE_OPENAPI",
    "LOCALE2B_AGENT_BIN",
    "LOCALE2B_AGENT_LOG",
];

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
        let known = known_keys();
        for (var, value) in vars {
            if NON_SETTING_VARS.contains(&var.as_str()) {
                continue;
            }
            let key = var.trim_start_matches("LOCALE2B_").to_ascii_lowercase();
            let Some(kind) = known.get(key.as_str()) else {
                // Variables of other tools may share our prefix; only warn.
                tracing::warn!(var = %var, "ignoring unknown LOCALE2B_ variable");
                continue;
            };
            let parsed = parse_env_value(*kind, value).map_err(|reason| ConfigError::Env {
                var: var.clone(),
                value: if key.contains("key") {
                    "<redacted>".into()
                } else {
                    value.clone()
                },
                reason,
            })?;
            table.insert(key, parsed);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field consistency.
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
        if self.disk_size_mb < 64 {
            return bad("disk_size_mb must be at least 64".into());
        }
        if self.max_frame_bytes < 64 * 1024 {
            return bad("max_frame_bytes must be at least 65536".into());
        }
        if locale2b_protocol::WorkspaceId::try_from(self.default_template.clone()).is_err() {
            return bad(format!(
                "default_template {:?} is not a valid name",
                self.default_template
            ));
        }
        Ok(())
    }

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

    /// Boot timeout.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_sec)
    }

    /// Shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_sec)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Map,
}

fn known_keys() -> BTreeMap<&'static str, Kind> {
    use Kind::*;
    [
        ("host", Str),
        ("port", Int),
        ("log_level", Str),
        ("log_format", Str),
        ("max_sandboxes", Int),
        ("memory_budget_mb", Int),
        ("host_reserve_mb", Int),
        ("default_memory_mb", Int),
        ("min_memory_mb", Int),
        ("max_memory_mb", Int),
        ("default_vcpu", Int),
        ("max_vcpu", Int),
        ("disk_size_mb", Int),
        ("boot_timeout_sec", Int),
        ("exec_timeout_sec", Int),
        ("max_exec_timeout_sec", Int),
        ("idle_timeout_sec", Int),
        ("shutdown_grace_sec", Int),
        ("health_check_interval_sec", Int),
        ("base_dir", Str),
        ("cache_dir", Str),
        ("default_template", Str),
        ("vmm", Str),
        ("firecracker_bin", Str),
        ("jailer_bin", Str),
        ("use_jailer", Bool),
        ("jailer_uid", Int),
        ("jailer_gid", Int),
        ("jailer_chroot_base", Str),
        ("qemu_bin", Str),
        ("api_key", Str),
        ("api_keys_file", Str),
        ("rate_limit_per_sec", Int),
        ("max_body_bytes", Int),
        ("max_upload_bytes", Int),
        ("max_frame_bytes", Int),
        ("sandbox_env", Map),
    ]
    .into_iter()
    .collect()
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

fn read_file_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    // Type-check the file alone so its errors name the file.
    toml::Value::Table(table.clone())
        .try_into::<Config>()
        .map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
    Ok(table)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.max_sandboxes, 20);
        assert_eq!(c.default_memory_mb, 512);
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "max_sandboxes = 3\nport = 9000\n").unwrap();
        let c = Config::from_vars(&vars(&[
            ("LOCALE2B_CONFIG_FILE", file.to_str().unwrap()),
            ("LOCALE2B_PORT", "9100"),
            ("LOCALE2B_VMM", "qemu"),
            ("LOCALE2B_USE_JAILER", "yes"),
            ("LOCALE2B_SANDBOX_ENV", "A=1,B=x=y"),
        ]))
        .unwrap();
        assert_eq!(c.max_sandboxes, 3);
        assert_eq!(c.port, 9100);
        assert_eq!(c.vmm, VmmChoice::Qemu);
        assert!(c.use_jailer);
        assert_eq!(c.sandbox_env.get("B").map(String::as_str), Some("x=y"));
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
        assert_eq!(c.api_key.unwrap().expose(), "hunter2");
    }
}
