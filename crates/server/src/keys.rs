//! API keys: loading from the configuration, generating one on first start,
//! and constant-time checking.

use locale2b_config::{Secret, ServerConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// File name of the generated key inside the base directory.
pub const GENERATED_KEY_FILE: &str = "api-key";

/// Why the API keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("cannot {action} API key file {path}")]
    Io {
        /// "read", "create", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file's content is unusable.
    #[error("API key file {path}, line {line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 = whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Where the keys in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `api_key` and/or `api_keys_file` of the configuration.
    Configured,
    /// The generated key in `<base_dir>/api-key`.
    Generated {
        /// The key file.
        path: PathBuf,
        /// True when the key was created by this call (first start).
        created: bool,
    },
}

/// One accepted key: its name, the SHA-256 of its secret (the secret
/// itself is never kept), its admin scope and its quota overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The name audit lines and ownership use.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Sees every sandbox and workspace (`admin=true`).
    pub admin: bool,
    /// `max_sandboxes=` of its line (the configured default otherwise).
    pub max_sandboxes: Option<u32>,
    /// `max_memory_mb=` of its line (the configured default otherwise).
    pub max_memory_mb: Option<u64>,
}

impl KeyEntry {
    /// A key with no admin scope and the default quotas.
    pub fn new(name: impl Into<String>, secret: &str) -> Self {
        Self {
            name: name.into(),
            hash: sha256(secret),
            admin: false,
            max_sandboxes: None,
            max_memory_mb: None,
        }
    }
}

fn sha256(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// The line of a keys file for a key: its name and the SHA-256 of the
/// secret (what `locale2b key new` writes).
pub fn key_file_line(name: &str, secret: &str) -> String {
    let hex: String = sha256(secret).iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}:sha256:{hex}")
}

/// Identity of the keys file's content as the filesystem reports it: a
/// change of any of these means the file was edited or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp_of(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

#[derive(Debug)]
struct FileKeys {
    path: PathBuf,
    stamp: Option<Stamp>,
    keys: Vec<KeyEntry>,
}

#[derive(Debug)]
struct Shared {
    /// Keys that do not come from the keys file (`api_key`, generated).
    fixed: Vec<KeyEntry>,
    /// The keys file, re-read when it changes.
    file: Option<std::sync::RwLock<FileKeys>>,
    source: KeySource,
    default_max_sandboxes: u32,
    default_max_memory_mb: u64,
}

/// The named API keys accepted by the server. The keys file is re-read
/// when it changes (checked at every authentication), so keys are added
/// and revoked without a restart; a file that no longer parses keeps the
/// keys read last and logs why. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    shared: std::sync::Arc<Shared>,
}

impl ApiKeys {
    /// Keys given directly (tests, embedding).
    pub fn new(keys: Vec<(String, Secret)>) -> Self {
        Self::from_entries(
            keys.iter()
                .map(|(n, s)| KeyEntry::new(n.clone(), s.expose()))
                .collect(),
        )
    }

    /// Entries given directly, with their scopes and quotas.
    pub fn from_entries(fixed: Vec<KeyEntry>) -> Self {
        Self {
            shared: std::sync::Arc::new(Shared {
                fixed,
                file: None,
                source: KeySource::Configured,
                default_max_sandboxes: 0,
                default_max_memory_mb: 0,
            }),
        }
    }

    /// Where the keys came from.
    pub fn source(&self) -> &KeySource {
        &self.shared.source
    }

    /// The file holding the generated key, when the keys were not configured:
    /// the CLI prints "API key stored in <path>".
    pub fn stored_at(&self) -> Option<&Path> {
        match &self.shared.source {
            KeySource::Generated { path, .. } => Some(path),
            KeySource::Configured => None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.with_entries(|e| e.len())
    }

    /// True when there is no key (every authenticated request is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_entries<R>(&self, f: impl FnOnce(&[&KeyEntry]) -> R) -> R {
        match &self.shared.file {
            Some(file) => {
                let file = file
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let all: Vec<&KeyEntry> = self.shared.fixed.iter().chain(&file.keys).collect();
                f(&all)
            }
            None => f(&self.shared.fixed.iter().collect::<Vec<_>>()),
        }
    }

    /// Re-reads the keys file when it changed since the last read.
    pub fn refresh(&self) {
        let Some(file) = &self.shared.file else {
            return;
        };
        let path = file
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .path
            .clone();
        let stamp = stamp_of(&path).ok();
        let mut file = file
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamp == file.stamp {
            return;
        }
        file.stamp = stamp;
        match read_key_file(&path) {
            Ok(keys) => {
                tracing::info!(path = %path.display(), keys = keys.len(), "API keys file changed: keys reloaded");
                file.keys = keys;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, keys = file.keys.len(), "API keys file changed but cannot be used; the keys read last stay in force until it is fixed");
            }
        }
    }

    /// The name of the key equal to `presented` (the keys file is re-read
    /// first when it changed). Compares SHA-256 digests, every one of them,
    /// in constant time.
    pub fn check(&self, presented: &str) -> Option<String> {
        self.refresh();
        let digest = sha256(presented);
        self.with_entries(|entries| {
            let mut found: Option<String> = None;
            for e in entries {
                let eq: bool = e.hash.ct_eq(&digest).into();
                if eq && found.is_none() {
                    found = Some(e.name.clone());
                }
            }
            found
        })
    }

    /// Whether the key named `name` has the admin scope.
    pub fn is_admin(&self, name: &str) -> bool {
        self.with_entries(|e| e.iter().any(|k| k.name == name && k.admin))
    }

    /// The quota of the key named `name` (its line's values, else the
    /// configured defaults; a key no longer in the file gets the defaults).
    pub fn quota(&self, name: &str) -> locale2b_manager::OwnerQuota {
        let (s, m) = self.with_entries(|e| {
            e.iter()
                .find(|k| k.name == name)
                .map_or((None, None), |k| (k.max_sandboxes, k.max_memory_mb))
        });
        locale2b_manager::OwnerQuota {
            max_sandboxes: s.unwrap_or(self.shared.default_max_sandboxes),
            max_memory_mb: m.unwrap_or(self.shared.default_max_memory_mb),
        }
    }
}

impl locale2b_manager::QuotaSource for ApiKeys {
    fn quota(&self, owner: &str) -> Option<locale2b_manager::OwnerQuota> {
        let q = ApiKeys::quota(self, owner);
        (q != locale2b_manager::OwnerQuota::default()).then_some(q)
    }
}

/// Loads the keys from `config.api_key` and `config.api_keys_file` (both
/// may be set; the single key is named `default`). When neither is set, reads
/// `<base_dir>/api-key` (`base_dir` is the manager's state directory), creating it (mode 0600, with a fresh random 32-byte
/// key, hex) and the base directory when missing.
///
/// Keys file format (docs/configuration.md): one key per line,
/// `name:sha256:<64 hex>` (the key's SHA-256, what `locale2b key new`
/// writes), `name:key` or just `key` (named `key<N>` after its line), then
/// optional `admin=true`, `max_sandboxes=N`, `max_memory_mb=N` separated
/// by spaces; blank lines and lines starting with `#` are ignored.
///
/// # Errors
/// [`KeyError`] naming the file and line.
pub fn load_or_create_api_keys(
    config: &ServerConfig,
    base_dir: &Path,
) -> Result<ApiKeys, KeyError> {
    let mut fixed = Vec::new();
    if let Some(k) = &config.api_key {
        if !k.expose().trim().is_empty() {
            fixed.push(KeyEntry::new("default", k.expose().trim()));
        }
    }
    let shared = |fixed, file, source| ApiKeys {
        shared: std::sync::Arc::new(Shared {
            fixed,
            file,
            source,
            default_max_sandboxes: config.key_max_sandboxes,
            default_max_memory_mb: config.key_max_memory_mb,
        }),
    };
    if let Some(path) = &config.api_keys_file {
        let stamp = stamp_of(path).ok();
        let keys = read_key_file(path)?;
        if let Some(dup) = keys.iter().find(|k| fixed.iter().any(|f| f.name == k.name)) {
            return Err(KeyError::Invalid {
                path: path.clone(),
                line: 0,
                reason: format!(
                    "key name {:?} is taken by LOCALE2B_API_KEY; rename it",
                    dup.name
                ),
            });
        }
        let file = FileKeys {
            path: path.clone(),
            stamp,
            keys,
        };
        return Ok(shared(
            fixed,
            Some(std::sync::RwLock::new(file)),
            KeySource::Configured,
        ));
    }
    if !fixed.is_empty() {
        return Ok(shared(fixed, None, KeySource::Configured));
    }
    let path = base_dir.join(GENERATED_KEY_FILE);
    let (key, created) = read_or_generate(base_dir, &path)?;
    Ok(shared(
        vec![KeyEntry::new("generated", key.expose())],
        None,
        KeySource::Generated { path, created },
    ))
}

fn read_key_file(path: &Path) -> Result<Vec<KeyEntry>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let keys = parse_key_file(path, &text)?;
    if keys.is_empty() {
        return Err(KeyError::Invalid {
            path: path.to_owned(),
            line: 0,
            reason: "the file holds no key".into(),
        });
    }
    Ok(keys)
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn parse_key_file(path: &Path, text: &str) -> Result<Vec<KeyEntry>, KeyError> {
    let mut keys: Vec<KeyEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        let (name, key) = match first.split_once(':') {
            Some((n, k)) => (n.trim().to_owned(), k.trim()),
            None => (format!("key{}", i + 1), first),
        };
        if name.is_empty() {
            return Err(invalid("empty key name before ':'".into()));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(invalid(format!(
                "key name {name:?} may only hold letters, digits and - _ . @"
            )));
        }
        let hash = match key.strip_prefix("sha256:") {
            Some(hex) => parse_hex32(hex).ok_or_else(|| {
                invalid("sha256: must be followed by the key's SHA-256 as 64 hex digits".into())
            })?,
            None if key.len() < 16 => {
                return Err(invalid("key is shorter than 16 characters".into()))
            }
            None => sha256(key),
        };
        let mut entry = KeyEntry {
            name,
            hash,
            admin: false,
            max_sandboxes: None,
            max_memory_mb: None,
        };
        for opt in fields {
            let Some((k, v)) = opt.split_once('=') else {
                return Err(invalid(format!(
                    "{opt:?} is not an option: write admin=true, max_sandboxes=N or max_memory_mb=N (keys hold no spaces)"
                )));
            };
            let number = || {
                v.parse::<u64>()
                    .map_err(|_| invalid(format!("{k}={v:?}: not a whole number")))
            };
            match k {
                "admin" => {
                    entry.admin = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(format!("admin={v:?}: use true or false"))),
                    }
                }
                "max_sandboxes" => {
                    entry.max_sandboxes = Some(
                        u32::try_from(number()?)
                            .map_err(|_| invalid(format!("max_sandboxes={v}: too large")))?,
                    );
                }
                "max_memory_mb" => entry.max_memory_mb = Some(number()?),
                _ => {
                    return Err(invalid(format!(
                        "unknown option {k:?}: use admin, max_sandboxes or max_memory_mb"
                    )))
                }
            }
        }
        if keys.iter().any(|k| k.name == entry.name) {
            return Err(invalid(format!("duplicate key name {:?}", entry.name)));
        }
        if keys.iter().any(|k| k.hash == entry.hash) {
            return Err(invalid("the same key is on an earlier line".into()));
        }
        keys.push(entry);
    }
    Ok(keys)
}

fn read_or_generate(base_dir: &Path, path: &Path) -> Result<(Secret, bool), KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim();
            if key.len() < 16 {
                return Err(KeyError::Invalid {
                    path: path.to_owned(),
                    line: 1,
                    reason: "stored key is shorter than 16 characters; delete the file to generate a new one".into(),
                });
            }
            return Ok((Secret::new(key), false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(KeyError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        }
    }
    std::fs::create_dir_all(base_dir).map_err(|source| KeyError::Io {
        action: "create the directory of",
        path: path.to_owned(),
        source,
    })?;
    let key = generate_key();
    let io_err = |source| KeyError::Io {
        action: "create",
        path: path.to_owned(),
        source,
    };
    // create_new: never overwrite a key another process just wrote.
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_or_generate(base_dir, path).map(|(k, _)| (k, false));
        }
        Err(e) => return Err(io_err(e)),
    };
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    Ok((Secret::new(key), true))
}

/// `e2b_` and 32 random bytes as 64 lowercase hex characters: the shape
/// E2B's SDKs check keys for (older ones refuse any other), so one key
/// serves both APIs.
pub fn generate_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("e2b_{hex}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config() -> ServerConfig {
        ServerConfig::default()
    }

    #[test]
    fn generates_once_with_mode_0600_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let first = load_or_create_api_keys(&config(), &base).unwrap();
        let path = base.join(GENERATED_KEY_FILE);
        assert_eq!(
            first.source(),
            &KeySource::Generated {
                path: path.clone(),
                created: true
            }
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stored = std::fs::read_to_string(&path).unwrap();
        assert_eq!(stored.trim().len(), 68);
        assert!(stored.starts_with("e2b_"));
        assert_eq!(first.check(stored.trim()).as_deref(), Some("generated"));
        let second = load_or_create_api_keys(&config(), &base).unwrap();
        assert_eq!(second.stored_at(), Some(path.as_path()));
        assert_eq!(second.check(stored.trim()).as_deref(), Some("generated"));
        assert!(matches!(
            second.source(),
            KeySource::Generated { created: false, .. }
        ));
    }

    #[test]
    fn configured_keys_from_value_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            "# team keys\nalice:aaaaaaaaaaaaaaaaaaaa\n\nbbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let mut c = config();
        c.api_key = Some(Secret::new("cccccccccccccccccccc"));
        c.api_keys_file = Some(file);
        let keys = load_or_create_api_keys(&c, dir.path()).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("alice"));
        assert_eq!(keys.check("bbbbbbbbbbbbbbbbbbbb").as_deref(), Some("key4"));
        assert_eq!(
            keys.check("cccccccccccccccccccc").as_deref(),
            Some("default")
        );
        assert_eq!(keys.check("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(keys.stored_at(), None);
        assert!(!dir.path().join(GENERATED_KEY_FILE).exists());
    }

    #[test]
    fn bad_key_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "ok:aaaaaaaaaaaaaaaaaaaa\nshort\n").unwrap();
        let mut c = config();
        c.api_keys_file = Some(file);
        let err = load_or_create_api_keys(&c, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn hashed_keys_with_scopes_and_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        let line = key_file_line("alice", "alice-secret-0123456789");
        assert!(line.starts_with("alice:sha256:") && line.len() == "alice:sha256:".len() + 64);
        std::fs::write(
            &file,
            format!(
                "{line} max_sandboxes=2 max_memory_mb=1024\nops:ops-secret-0123456789 admin=true\n"
            ),
        )
        .unwrap();
        let mut c = config();
        c.api_keys_file = Some(file);
        c.key_max_sandboxes = 7;
        let keys = load_or_create_api_keys(&c, dir.path()).unwrap();
        assert_eq!(
            keys.check("alice-secret-0123456789").as_deref(),
            Some("alice")
        );
        assert_eq!(keys.check(&line), None, "the hash is not the key");
        assert!(keys.is_admin("ops") && !keys.is_admin("alice"));
        let q = keys.quota("alice");
        assert_eq!((q.max_sandboxes, q.max_memory_mb), (2, 1024));
        let q = keys.quota("ops");
        assert_eq!((q.max_sandboxes, q.max_memory_mb), (7, 0), "defaults");
    }

    #[test]
    fn the_keys_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "a:aaaaaaaaaaaaaaaaaaaa\nb:bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        let mut c = config();
        c.api_keys_file = Some(file.clone());
        let keys = load_or_create_api_keys(&c, dir.path()).unwrap();
        assert_eq!(keys.check("bbbbbbbbbbbbbbbbbbbb").as_deref(), Some("b"));
        // Revoke b, add c (replaced by rename, as editors do).
        let tmp = dir.path().join("keys.new");
        std::fs::write(
            &tmp,
            format!(
                "a:aaaaaaaaaaaaaaaaaaaa\n{}\n",
                key_file_line("c", "cccccccccccccccccccc")
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(keys.check("bbbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(keys.check("cccccccccccccccccccc").as_deref(), Some("c"));
        // Appended in place with a broken line: the keys read last stay.
        std::fs::write(
            &file,
            format!(
                "a:aaaaaaaaaaaaaaaaaaaa\n{}\nbroken\n",
                key_file_line("c", "cccccccccccccccccccc")
            ),
        )
        .unwrap();
        assert_eq!(keys.check("cccccccccccccccccccc").as_deref(), Some("c"));
        assert_eq!(keys.len(), 2);
        // Fixed: read again.
        std::fs::write(&file, "a:aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        assert_eq!(keys.check("cccccccccccccccccccc"), None);
        assert_eq!(keys.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("a"));
    }

    #[test]
    fn key_file_errors_name_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("a:sha256:abc\n", "64 hex"),
            ("a:aaaaaaaaaaaaaaaaaaaa admin=yes\n", "admin=\"yes\""),
            (
                "a:aaaaaaaaaaaaaaaaaaaa max_sandboxes=-1\n",
                "not a whole number",
            ),
            ("a:aaaaaaaaaaaaaaaaaaaa colour=red\n", "unknown option"),
            ("a:aaaaaaaaaaaaaaaaaaaa oops\n", "is not an option"),
            ("a b:aaaaaaaaaaaaaaaaaaaa\n", "shorter than 16"),
            ("a/b:aaaaaaaaaaaaaaaaaaaa\n", "may only hold"),
            (
                "a:aaaaaaaaaaaaaaaaaaaa\nb:aaaaaaaaaaaaaaaaaaaa\n",
                "earlier line",
            ),
            ("# nothing\n", "holds no key"),
        ] {
            let file = dir.path().join("keys");
            std::fs::write(&file, text).unwrap();
            let mut c = config();
            c.api_keys_file = Some(file);
            let err = load_or_create_api_keys(&c, dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
