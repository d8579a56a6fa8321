//! Host limits per sandbox: every VMM process goes into its own cgroup
//! `locale2b-<base dir hash>/<sandbox_id>` below the server's own cgroup
//! (one parent per base directory, so servers of different base
//! directories never touch each other's cgroups), with a memory
//! limit (guest RAM plus an overhead), a CPU quota (one core per vCPU plus
//! a margin for the VMM's other threads) and a task limit.
//!
//! cgroup v2 is used when the server's cgroup can delegate the memory, cpu
//! and pids controllers; otherwise the v1 hierarchies of those controllers
//! when they are mounted (older hosts, some containers). When neither
//! works, sandboxes run without host limits and [`Cgroups::describe`] says
//! why (the server logs it at start and `doctor` reports it).

use locale2b_config::CgroupMode;
use locale2b_protocol::SandboxId;
use std::path::{Path, PathBuf};

/// Name of the directory holding the sandboxes' cgroups of `base_dir`.
pub fn parent_name(base_dir: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(base_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("locale2b-{hex}")
}
/// CPU period, microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The limits of one VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit, bytes.
    pub memory_bytes: u64,
    /// CPU quota per [`CPU_PERIOD_US`], microseconds.
    pub cpu_quota_us: u64,
    /// Most tasks.
    pub pids_max: u32,
}

impl Limits {
    /// The limits of a VMM with `memory_mb` of guest RAM and `vcpus`.
    pub fn for_vm(
        memory_mb: u32,
        vcpus: u8,
        overhead_mb: u64,
        cpu_extra_pct: u32,
        pids_max: u32,
    ) -> Self {
        let pct = u64::from(vcpus) * 100 + u64::from(cpu_extra_pct);
        Self {
            memory_bytes: (u64::from(memory_mb) + overhead_mb) * 1024 * 1024,
            cpu_quota_us: CPU_PERIOD_US * pct / 100,
            pids_max,
        }
    }
}

/// Where sandbox cgroups are made, or why they are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2: `<dir>/<sandbox_id>` with all three controllers.
    V2 {
        /// The `locale2b` directory.
        dir: PathBuf,
    },
    /// cgroup v1: one `locale2b` directory per controller hierarchy.
    V1 {
        /// In the memory hierarchy.
        memory: PathBuf,
        /// In the cpu hierarchy.
        cpu: PathBuf,
        /// In the pids hierarchy.
        pids: PathBuf,
    },
    /// No limits; the reason.
    Unavailable(String),
}

/// One line of `/proc/self/mountinfo`: (mount point, fs type, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_owned();
            let _source = r.next();
            let opts = r.next().unwrap_or_default().to_owned();
            Some((PathBuf::from(point), fstype, opts))
        })
        .collect()
}

/// The server's own cgroup path in the v2 hierarchy (`0::<path>`) or in
/// the v1 hierarchy of `controller`.
fn own_path(controller: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        if hit {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Makes `path` and checks that a sandbox's cgroup can be made in it (a
/// directory left by an earlier run as another user may exist but not be
/// ours).
fn make_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let probe = path.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::remove_dir(&probe))
        .map_err(|e| {
            format!(
                "cannot create cgroups in {}: {e} (run as root, or give the server's user that subtree, e.g. systemd Delegate=yes)",
                path.display()
            )
        })
}

impl Cgroups {
    /// Finds a usable hierarchy (see the module docs).
    pub fn detect(mode: CgroupMode, base_dir: &Path) -> Self {
        let parent = parent_name(base_dir);
        if mode == CgroupMode::Off {
            return Self::Unavailable("cgroups are off (LOCALE2B_CGROUPS=off)".into());
        }
        let mounts = mounts();
        let mut why = Vec::new();
        if let Some((point, _, _)) = mounts.iter().find(|(_, t, _)| t == "cgroup2") {
            match Self::try_v2(point, &parent) {
                Ok(me) => return me,
                Err(e) => why.push(format!("cgroup v2 at {}: {e}", point.display())),
            }
        }
        let v1 = |c: &str| {
            mounts
                .iter()
                .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == c))
                .map(|(p, _, _)| p.join(own_path(Some(c))).join(&parent))
        };
        match (v1("memory"), v1("cpu"), v1("pids")) {
            (Some(memory), Some(cpu), Some(pids)) => {
                match [&memory, &cpu, &pids].iter().try_for_each(|d| make_dir(d)) {
                    Ok(()) => return Self::V1 { memory, cpu, pids },
                    Err(e) => why.push(format!("cgroup v1: {e}")),
                }
            }
            _ => why
                .push("cgroup v1: the memory, cpu and pids hierarchies are not all mounted".into()),
        }
        Self::Unavailable(why.join("; "))
    }

    fn try_v2(point: &Path, parent: &str) -> Result<Self, String> {
        let own = point.join(own_path(None));
        let available = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| !available.split_whitespace().any(|a| a == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "controllers {} are not available in {} (delegate them, e.g. systemd Delegate=yes)",
                missing.join(", "),
                own.display()
            ));
        }
        let dir = own.join(parent);
        make_dir(&dir)?;
        // Controllers must be enabled on the way down; a cgroup that holds
        // processes itself (other than the root) cannot delegate them.
        write(&own.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        Ok(Self::V2 { dir })
    }

    /// Whether limits are applied.
    pub fn active(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }

    /// One line for logs, `/health` and `doctor`.
    pub fn describe(&self) -> String {
        match self {
            Self::V2 { dir } => format!("cgroup v2 ({})", dir.display()),
            Self::V1 { memory, .. } => format!(
                "cgroup v1 (memory, cpu, pids; {})",
                memory.parent().unwrap_or(memory).display()
            ),
            Self::Unavailable(why) => format!("none: {why}"),
        }
    }

    /// Short name: `v2`, `v1` or `none`.
    pub fn version(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2",
            Self::V1 { .. } => "v1",
            Self::Unavailable(_) => "none",
        }
    }

    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Self::V2 { dir } => vec![dir.join(name)],
            Self::V1 { memory, cpu, pids } => {
                vec![memory.join(name), cpu.join(name), pids.join(name)]
            }
            Self::Unavailable(_) => Vec::new(),
        }
    }

    /// Puts process `pid` (a VMM with all its threads) into the sandbox's
    /// cgroup with `limits`.
    ///
    /// # Errors
    /// A message naming the file that could not be written.
    pub fn place(&self, id: &SandboxId, pid: u32, limits: Limits) -> Result<(), String> {
        let pid = pid.to_string();
        match self {
            Self::V2 { dir } => {
                let d = dir.join(id.as_str());
                make_dir(&d)?;
                write(&d.join("memory.max"), &limits.memory_bytes.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
                write(
                    &d.join("cpu.max"),
                    &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
                )?;
                write(&d.join("pids.max"), &limits.pids_max.to_string())?;
                write(&d.join("cgroup.procs"), &pid)
            }
            Self::V1 { memory, cpu, pids } => {
                let (m, c, p) = (
                    memory.join(id.as_str()),
                    cpu.join(id.as_str()),
                    pids.join(id.as_str()),
                );
                for d in [&m, &c, &p] {
                    make_dir(d)?;
                }
                write(
                    &m.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                // Pages the VMM touched before it moved are charged here too.
                let _ = write(&m.join("memory.move_charge_at_immigrate"), "3");
                write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(
                    &c.join("cpu.cfs_quota_us"),
                    &limits.cpu_quota_us.to_string(),
                )?;
                write(&p.join("pids.max"), &limits.pids_max.to_string())?;
                for d in [&m, &c, &p] {
                    write(&d.join("cgroup.procs"), &pid)?;
                }
                Ok(())
            }
            Self::Unavailable(why) => Err(why.clone()),
        }
    }

    /// The memory the sandbox's cgroup is charged now, bytes.
    pub fn memory_current(&self, id: &SandboxId) -> Option<u64> {
        let file = match self {
            Self::V2 { dir } => dir.join(id.as_str()).join("memory.current"),
            Self::V1 { memory, .. } => memory.join(id.as_str()).join("memory.usage_in_bytes"),
            Self::Unavailable(_) => return None,
        };
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The directory of the sandbox's cgroup in the memory hierarchy (v2:
    /// its only one), if it exists.
    pub fn memory_dir(&self, id: &SandboxId) -> Option<PathBuf> {
        self.dirs(id.as_str())
            .into_iter()
            .next()
            .filter(|d| d.is_dir())
    }

    /// Removes the sandbox's cgroup (its VMM has exited). Answers whether
    /// something was removed.
    pub fn remove(&self, id: &SandboxId) -> bool {
        let mut removed = false;
        for d in self.dirs(id.as_str()) {
            if d.is_dir() && std::fs::remove_dir(&d).is_ok() {
                removed = true;
            }
        }
        removed
    }

    /// Names of the sandbox cgroups that exist.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in self.dirs("") {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("sb-") && e.path().is_dir() && !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm() {
        let l = Limits::for_vm(512, 2, 384, 50, 512);
        assert_eq!(l.memory_bytes, 896 * 1024 * 1024);
        assert_eq!(l.cpu_quota_us, 250_000);
        assert_eq!(l.pids_max, 512);
    }

    #[test]
    fn off_means_unavailable() {
        let c = Cgroups::detect(CgroupMode::Off, Path::new("/tmp/x"));
        assert_ne!(parent_name(Path::new("/a")), parent_name(Path::new("/b")));
        assert!(parent_name(Path::new("/a")).starts_with("locale2b-"));
        assert!(!c.active());
        assert!(
            c.describe().contains("LOCALE2B_CGROUPS=off"),
            "{}",
            c.describe()
        );
    }
}
