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

/// The named API keys accepted by the server.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    keys: Vec<(String, Secret)>,
    source: KeySource,
}

impl ApiKeys {
    /// Keys given directly (tests, embedding).
    pub fn new(keys: Vec<(String, Secret)>) -> Self {
        Self {
            keys,
            source: KeySource::Configured,
        }
    }

    /// Where the keys came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The file holding the generated key, when the keys were not configured:
    /// the CLI prints "API key stored in <path>".
    pub fn stored_at(&self) -> Option<&Path> {
        match &self.source {
            KeySource::Generated { path, .. } => Some(path),
            KeySource::Configured => None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key (every authenticated request is refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The name of the key equal to `presented`, comparing against every key
    /// in constant time (no early exit on the first match or mismatch).
    pub fn check(&self, presented: &str) -> Option<&str> {
        let mut found: Option<&str> = None;
        for (name, secret) in &self.keys {
            let eq: bool = secret
                .expose()
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into();
            if eq && found.is_none() {
                found = Some(name);
            }
        }
        found
    }
}

/// Loads the keys from `config.api_key` and `config.api_keys_file` (both
/// may be set; the single key is named `default`). When neither is set, reads
/// `<base_dir>/api-key` (`base_dir` is the manager's state directory), creating it (mode 0600, with a fresh random 32-byte
/// key, hex) and the base directory when missing.
///
/// Key file format: one key per line, `name:key` or just `key` (named
/// `key<N>` after its line); blank lines and lines starting with `#` are
/// ignored.
///
/// # Errors
/// [`KeyError`] naming the file and line.
pub fn load_or_create_api_keys(
    config: &ServerConfig,
    base_dir: &Path,
) -> Result<ApiKeys, KeyError> {
    let mut keys = Vec::new();
    if let Some(k) = &config.api_key {
        if !k.expose().trim().is_empty() {
            keys.push(("default".to_owned(), Secret::new(k.expose().trim())));
        }
    }
    if let Some(path) = &config.api_keys_file {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let from_file = parse_key_file(path, &text)?;
        if from_file.is_empty() {
            return Err(KeyError::Invalid {
                path: path.clone(),
                line: 0,
                reason: "the file holds no key".into(),
            });
        }
        keys.extend(from_file);
    }
    if !keys.is_empty() {
        return Ok(ApiKeys {
            keys,
            source: KeySource::Configured,
        });
    }
    let path = base_dir.join(GENERATED_KEY_FILE);
    let (key, created) = read_or_generate(base_dir, &path)?;
    Ok(ApiKeys {
        keys: vec![("generated".to_owned(), key)],
        source: KeySource::Generated { path, created },
    })
}

fn parse_key_file(path: &Path, text: &str) -> Result<Vec<(String, Secret)>, KeyError> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, key) = match line.split_once(':') {
            Some((n, k)) => (n.trim().to_owned(), k.trim()),
            None => (format!("key{}", i + 1), line),
        };
        let invalid = |reason: &str| KeyError::Invalid {
            path: path.to_owned(),
            line: i + 1,
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("empty key name before ':'"));
        }
        if key.len() < 16 {
            return Err(invalid("key is shorter than 16 characters"));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(invalid("key contains whitespace"));
        }
        if keys.iter().any(|(n, _)| *n == name) {
            return Err(invalid("duplicate key name"));
        }
        keys.push((name, Secret::new(key)));
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
fn generate_key() -> String {
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
        assert_eq!(first.check(stored.trim()), Some("generated"));
        let second = load_or_create_api_keys(&config(), &base).unwrap();
        assert_eq!(second.stored_at(), Some(path.as_path()));
        assert_eq!(second.check(stored.trim()), Some("generated"));
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
        assert_eq!(keys.check("aaaaaaaaaaaaaaaaaaaa"), Some("alice"));
        assert_eq!(keys.check("bbbbbbbbbbbbbbbbbbbb"), Some("key4"));
        assert_eq!(keys.check("cccccccccccccccccccc"), Some("default"));
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
}
