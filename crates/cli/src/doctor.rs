//! `locale2b doctor`: what this host can run, and which backend the server
//! would choose, in words.

use locale2b_config::Config;
use locale2b_manager::backend;

/// Prints the probe's decision and reasons.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let report =
        locale2b_vmm::probe::probe(&backend::probe_config(&config.vmm, &config.manager)).await;
    println!(
        "backend: {} ({})",
        report.chosen,
        backend::accel_name(&report)
    );
    for reason in &report.reasons {
        println!("  - {reason}");
    }
    let image = config
        .manager
        .base_dir
        .join("images")
        .join(&config.manager.default_template);
    if image.join("vmlinux").exists() && image.join("rootfs.ext4").exists() {
        println!("guest image: {}", image.display());
    } else {
        println!(
            "guest image: missing in {} (run `locale2b image build`)",
            image.display()
        );
    }
    let cgroups =
        locale2b_manager::cgroup::Cgroups::detect(config.manager.cgroups, &config.manager.base_dir);
    println!("host limits per sandbox: {}", cgroups.describe());
    if !cgroups.active() {
        println!("  - sandboxes will run without memory, CPU and pids limits on their VMMs");
    }
    let workspaces = config.manager.base_dir.join("workspaces");
    let probe_dir = if workspaces.exists() {
        workspaces
    } else {
        config.manager.base_dir.clone()
    };
    match locale2b_manager::host::free_space_mb(&probe_dir) {
        Some(free) => println!(
            "disk: {free} MiB free under {} (a new {} MiB workspace disk needs {} MiB with the margin)",
            probe_dir.display(),
            config.manager.disk_size_mb,
            config.manager.disk_size_mb + config.manager.disk_free_margin_mb
        ),
        None => println!("disk: {} is not readable yet", probe_dir.display()),
    }
    println!("deployment:");
    let checks = deployment_checks(&config);
    for c in &checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        println!("  {mark} {:<10} {}", c.what, c.detail);
    }
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        anyhow::bail!("a deployment check failed (FAIL above)");
    }
    Ok(())
}

/// How a deployment check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// As docs/deployment.md recommends.
    Ok,
    /// Works, but weaker than recommended.
    Warn,
    /// Will not work.
    Fail,
}

/// One line of `doctor`'s deployment section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// Its verdict.
    pub verdict: Verdict,
    /// The finding and, when not ok, what to do.
    pub detail: String,
}

fn check(what: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        what,
        verdict,
        detail: detail.into(),
    }
}

/// The deployment checks: who the server would run as, its base
/// directory, /dev/kvm, the API keys, the audit log, the jailer.
pub fn deployment_checks(config: &Config) -> Vec<Check> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mut out = Vec::new();
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    out.push(if uid.is_root() {
        check(
            "user",
            Verdict::Warn,
            "running as root: run the server as the unprivileged user locale2b (scripts/install-service.sh, docs/deployment.md)",
        )
    } else {
        check("user", Verdict::Ok, format!("running as {name} (uid {uid})"))
    });

    let base = &config.manager.base_dir;
    out.push(match std::fs::metadata(base) {
        Err(e) => check(
            "base dir",
            Verdict::Fail,
            format!("{}: {e} (scripts/setup.sh creates it)", base.display()),
        ),
        Ok(m) if m.uid() != uid.as_raw() => check(
            "base dir",
            Verdict::Fail,
            format!(
                "{} belongs to uid {}, not to {name}: chown -R {name}: {}",
                base.display(),
                m.uid(),
                base.display()
            ),
        ),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => check(
            "base dir",
            Verdict::Warn,
            format!(
                "{} has mode {:o}: chmod 0700 it (workspaces and snapshots are private)",
                base.display(),
                m.permissions().mode() & 0o777
            ),
        ),
        Ok(_) => check(
            "base dir",
            Verdict::Ok,
            format!("{} owned by {name}, mode 0700", base.display()),
        ),
    });

    let kvm = std::path::Path::new("/dev/kvm");
    out.push(if !kvm.exists() {
        check(
            "kvm",
            Verdict::Warn,
            "no /dev/kvm: guests run under QEMU TCG (slow)",
        )
    } else {
        match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
            Ok(_) => check("kvm", Verdict::Ok, format!("/dev/kvm is usable by {name}")),
            Err(e) => check(
                "kvm",
                Verdict::Warn,
                format!("/dev/kvm: {e}: add {name} to the kvm group (guests fall back to TCG)"),
            ),
        }
    });

    let server = &config.server;
    out.push(match (&server.api_keys_file, &server.api_key) {
        (Some(path), _) => match (std::fs::metadata(path), std::fs::read_to_string(path)) {
            (Ok(m), Ok(text)) => {
                let clear = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .filter(|l| !l.split_whitespace().next().unwrap_or("").contains(":sha256:"))
                    .count();
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o007 != 0 {
                    check("api keys", Verdict::Warn, format!("{} is readable by every user (mode {mode:o}): chmod 0640", path.display()))
                } else if clear > 0 {
                    check("api keys", Verdict::Warn, format!("{}: {clear} key(s) stored in clear; `locale2b key new NAME --file {}` stores only hashes", path.display(), path.display()))
                } else {
                    check("api keys", Verdict::Ok, format!("{}: hashes only, mode {mode:o}, re-read on change", path.display()))
                }
            }
            (Err(e), _) | (_, Err(e)) => check("api keys", Verdict::Fail, format!("{}: {e}", path.display())),
        },
        (None, Some(_)) => check("api keys", Verdict::Warn, "one key from LOCALE2B_API_KEY, in clear in the environment: a keys file with hashes (LOCALE2B_API_KEYS_FILE) can be changed without a restart"),
        (None, None) => check("api keys", Verdict::Warn, format!("a generated key in {} (in clear): a keys file with hashes (LOCALE2B_API_KEYS_FILE) allows several named keys", base.join(locale2b_server::GENERATED_KEY_FILE).display())),
    });

    let audit = config.audit_log();
    let dir = audit
        .parent()
        .map_or_else(|| base.clone(), std::path::Path::to_path_buf);
    out.push(match std::fs::metadata(&dir) {
        Ok(m) if m.uid() == uid.as_raw() || uid.is_root() => check(
            "audit log",
            Verdict::Ok,
            format!("{} (its directory is writable)", audit.display()),
        ),
        Ok(_) => check(
            "audit log",
            Verdict::Fail,
            format!(
                "{}: the directory belongs to another user; the server will not start",
                audit.display()
            ),
        ),
        Err(e) => check(
            "audit log",
            Verdict::Fail,
            format!("{}: {e}", dir.display()),
        ),
    });

    out.push(match locale2b_manager::network::probe() {
        Some(why) => check(
            "egress networks",
            Verdict::Warn,
            format!("{why}; sandboxes asking for a network policy get 403 network_unavailable (docs/network.md)"),
        ),
        None => {
            let configured = config
                .manager
                .network_dns_upstream
                .as_deref()
                .and_then(|s| s.parse().ok());
            match locale2b_manager::network::dns_upstream(configured) {
                Ok(ip) => check(
                    "egress networks",
                    Verdict::Ok,
                    format!("available; sandbox resolvers ask {ip}"),
                ),
                Err(why) => check("egress networks", Verdict::Warn, why),
            }
        }
    });

    let vmm = &config.vmm;
    if vmm.use_jailer {
        let jailer = &vmm.jailer_bin;
        out.push(if !jailer.is_file() {
            check("jailer", Verdict::Fail, format!("{} does not exist (LOCALE2B_JAILER_BIN)", jailer.display()))
        } else if !uid.is_root() {
            check("jailer", Verdict::Fail, "the jailer needs root (it chroots, changes user and joins cgroups): run the server as root with the jailer, or as locale2b without it")
        } else {
            match std::fs::read(&vmm.firecracker_bin) {
                Err(e) => check("jailer", Verdict::Fail, format!("{}: {e}", vmm.firecracker_bin.display())),
                Ok(bytes) => match locale2b_vmm::firecracker::jailer::elf_interpreter(&bytes) {
                    Some(interp) => check("jailer", Verdict::Fail, format!("{} is dynamically linked ({interp}): inside the jailer's chroot there is no loader; use a statically linked Firecracker (the release binaries are)", vmm.firecracker_bin.display())),
                    None => check("jailer", Verdict::Ok, format!("{} with a statically linked {}", jailer.display(), vmm.firecracker_bin.display())),
                },
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn deployment_checks_name_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.manager.base_dir = dir.path().join("base");
        let checks = deployment_checks(&config);
        let base = checks.iter().find(|c| c.what == "base dir").unwrap();
        assert_eq!(base.verdict, Verdict::Fail, "{base:?}");
        std::fs::create_dir(&config.manager.base_dir).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            &config.manager.base_dir,
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "a:aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
        config.server.api_keys_file = Some(keys.clone());
        let checks = deployment_checks(&config);
        let get = |w: &str| checks.iter().find(|c| c.what == w).unwrap().clone();
        assert_eq!(get("base dir").verdict, Verdict::Warn);
        assert!(get("base dir").detail.contains("chmod 0700"));
        assert_eq!(get("api keys").verdict, Verdict::Warn);
        assert!(get("api keys").detail.contains("in clear"));
        std::fs::write(
            &keys,
            locale2b_server::key_file_line("a", "aaaaaaaaaaaaaaaaaaaa") + "\n",
        )
        .unwrap();
        std::fs::set_permissions(
            &config.manager.base_dir,
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let checks = deployment_checks(&config);
        let get = |w: &str| checks.iter().find(|c| c.what == w).unwrap().clone();
        assert_eq!(
            get("api keys").verdict,
            Verdict::Ok,
            "{:?}",
            get("api keys")
        );
        assert_eq!(get("base dir").verdict, Verdict::Ok);
        config.vmm.use_jailer = true;
        config.vmm.jailer_bin = dir.path().join("no-jailer");
        let checks = deployment_checks(&config);
        let jailer = checks.iter().find(|c| c.what == "jailer").unwrap();
        assert_eq!(jailer.verdict, Verdict::Fail);
        assert!(jailer.detail.contains("does not exist"), "{jailer:?}");
    }
}
