//! `locale2b key new|revoke`: edits a keys file. Only the SHA-256 of a new
//! key is written; the key itself is printed once. The file is replaced
//! atomically (written beside it, then renamed), mode 0600, so a running
//! server never reads half a file and picks the change up at its next
//! request.

use anyhow::{bail, Context as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `locale2b key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generate a key named NAME, add its hash to the keys file and print the key (once).
    New {
        /// The key's name (audit log, ownership): letters, digits, - _ . @
        name: String,
        /// The keys file (default: LOCALE2B_API_KEYS_FILE).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Let the key see every sandbox and workspace.
        #[arg(long)]
        admin: bool,
        /// Most sandboxes (any state) the key may have.
        #[arg(long)]
        max_sandboxes: Option<u32>,
        /// Most guest RAM over the key's running sandboxes, MiB.
        #[arg(long)]
        max_memory_mb: Option<u64>,
    },
    /// Remove the key named NAME from the keys file (refused from its next request on).
    Revoke {
        /// The key's name.
        name: String,
        /// The keys file (default: LOCALE2B_API_KEYS_FILE).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs a `key` subcommand.
///
/// # Errors
/// No keys file named, a name taken or unknown, I/O.
pub fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::New {
            name,
            file,
            admin,
            max_sandboxes,
            max_memory_mb,
        } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
            {
                bail!("key name {name:?} may only hold letters, digits and - _ . @");
            }
            let file = keys_file(file)?;
            let key = locale2b_server::generate_key();
            let mut line = locale2b_server::key_file_line(&name, &key);
            if admin {
                line.push_str(" admin=true");
            }
            if let Some(n) = max_sandboxes {
                line.push_str(&format!(" max_sandboxes={n}"));
            }
            if let Some(n) = max_memory_mb {
                line.push_str(&format!(" max_memory_mb={n}"));
            }
            add_line(&file, &name, &line)?;
            println!("{key}");
            eprintln!(
                "added key {name:?} to {} (only its SHA-256 is stored; this is the one time the key is shown)",
                file.display()
            );
            Ok(())
        }
        KeyCommand::Revoke { name, file } => {
            let file = keys_file(file)?;
            revoke(&file, &name)?;
            eprintln!("revoked key {name:?} in {}", file.display());
            Ok(())
        }
    }
}

fn keys_file(file: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    file.or_else(|| std::env::var_os("LOCALE2B_API_KEYS_FILE").map(PathBuf::from))
        .context("name the keys file with --file or LOCALE2B_API_KEYS_FILE")
}

/// The name of a key line (`name:...`), `None` for comments and blanks.
fn name_of(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_whitespace()
        .next()?
        .split_once(':')
        .map(|(n, _)| n)
}

fn read(file: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn add_line(file: &Path, name: &str, line: &str) -> anyhow::Result<()> {
    let mut text = read(file)?;
    if text.lines().any(|l| name_of(l) == Some(name)) {
        bail!(
            "{} already has a key named {name:?}; revoke it first or choose another name",
            file.display()
        );
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    replace(file, &text)
}

fn revoke(file: &Path, name: &str) -> anyhow::Result<()> {
    let text = read(file)?;
    let kept: Vec<&str> = text.lines().filter(|l| name_of(l) != Some(name)).collect();
    if kept.len() == text.lines().count() {
        bail!("{} has no key named {name:?}", file.display());
    }
    let mut out = kept.join("\n");
    out.push('\n');
    replace(file, &out)
}

/// Writes `text` beside `file` and renames it over `file`: mode 0600 for
/// a new file, else the old file's mode, owner and group (a keys file the
/// server's group may read stays readable to it).
fn replace(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let name = file
        .file_name()
        .context("the keys file path has no file name")?
        .to_string_lossy();
    let tmp = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Ok(old) = std::fs::metadata(file) {
        std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o777)))
            .with_context(|| {
                format!(
                    "cannot give {} the owner and mode of {}",
                    tmp.display(),
                    file.display()
                )
            })?;
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn new_keys_are_stored_as_hashes_and_revoked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        // A new file is created 0600.
        let fresh = dir.path().join("fresh");
        add_line(
            &fresh,
            "x",
            &locale2b_server::key_file_line("x", "xxxxxxxxxxxxxxxxxxxx"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&file, "# ours\nold:aaaaaaaaaaaaaaaaaaaa").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = locale2b_server::generate_key();
        add_line(
            &file,
            "alice",
            &format!(
                "{} max_sandboxes=3",
                locale2b_server::key_file_line("alice", &key)
            ),
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&key), "{text}");
        let err = add_line(&file, "alice", "alice:sha256:00").unwrap_err();
        assert!(err.to_string().contains("already has a key named"), "{err}");
        let c = locale2b_config::ServerConfig {
            api_keys_file: Some(file.clone()),
            ..Default::default()
        };
        let keys = locale2b_server::load_or_create_api_keys(&c, dir.path()).unwrap();
        assert_eq!(keys.check(&key).as_deref(), Some("alice"));
        assert_eq!(keys.quota("alice").max_sandboxes, 3);
        revoke(&file, "alice").unwrap();
        assert_eq!(keys.check(&key), None);
        assert_eq!(keys.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("old"));
        assert!(revoke(&file, "alice")
            .unwrap_err()
            .to_string()
            .contains("no key named"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // An existing file keeps its mode (the server's group may read it).
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        add_line(&file, "bob", &locale2b_server::key_file_line("bob", &key)).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
