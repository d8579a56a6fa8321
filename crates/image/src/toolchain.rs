//! The external tools behind each build stage, behind a trait so the pipeline's
//! cache logic can be tested without root, network or a compiler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ImageError;
use crate::template::DebianSpec;

/// Inputs of the kernel stage. The stage must create `out_dir/vmlinux`,
/// `out_dir/config` and `out_dir/release` (the `make kernelrelease` string).
#[derive(Debug)]
pub struct KernelJob<'a> {
    /// Config fragment applied on top of tinyconfig.
    pub fragment: &'a Path,
    /// Kernel source tarball.
    pub source_tarball: &'a Path,
    /// Where the artifacts go.
    pub out_dir: &'a Path,
    /// Scratch space (source tree, logs); may be reused by a retry.
    pub work_dir: &'a Path,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// Parallel make jobs.
    pub jobs: u32,
}

/// Inputs of the Debian-kernel stage. The stage must create
/// `out_dir/vmlinux`, `out_dir/initrd`, `out_dir/config` and
/// `out_dir/release`.
#[derive(Debug)]
pub struct DebianKernelJob<'a> {
    /// Kernel package (a meta package such as `linux-image-cloud-amd64`).
    pub package: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Version of `busybox-static` (the initramfs's shell and `insmod`).
    pub busybox_version: &'a str,
    /// Where the artifacts go.
    pub out_dir: &'a Path,
    /// Scratch space.
    pub work_dir: &'a Path,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
}

/// Inputs of the Debian tree stage. The stage must create the tree at `out_dir`.
#[derive(Debug)]
pub struct BaseJob<'a> {
    /// Suite, variant, mirrors, packages.
    pub debian: &'a DebianSpec,
    /// Guest hostname.
    pub hostname: &'a str,
    /// Template setup script, when there is one.
    pub setup_script: Option<&'a Path>,
    /// Root of the tree to create.
    pub out_dir: &'a Path,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
}

/// Inputs of the ext4 stage. The stage must create `out_file`.
#[derive(Debug)]
pub struct RootfsImageJob<'a> {
    /// Debian tree (not modified).
    pub base_dir: &'a Path,
    /// Agent binary to install at /usr/local/bin/locale2b-agent.
    pub agent: &'a Path,
    /// The ext4 image to write.
    pub out_file: &'a Path,
    /// Scratch space.
    pub work_dir: &'a Path,
    /// Filesystem UUID.
    pub uuid: &'a str,
    /// ext4 htree hash seed (a UUID).
    pub hash_seed: &'a str,
    /// Free space to leave, MiB.
    pub headroom_mib: u64,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
}

/// The tools the pipeline drives.
pub trait Toolchain {
    /// Configures and compiles the kernel.
    fn build_kernel(&self, job: &KernelJob<'_>) -> Result<(), ImageError>;
    /// Takes Debian's prebuilt kernel and makes its initramfs.
    fn fetch_debian_kernel(&self, job: &DebianKernelJob<'_>) -> Result<(), ImageError>;
    /// Version of a Debian package that apt would download (its candidate).
    fn candidate_version(&self, package: &str) -> Result<String, ImageError>;
    /// Makes the Debian tree.
    fn build_rootfs_base(&self, job: &BaseJob<'_>) -> Result<(), ImageError>;
    /// Copies the tree, adds the agent and writes the ext4 image.
    fn build_rootfs_image(&self, job: &RootfsImageJob<'_>) -> Result<(), ImageError>;
    /// Version of a Debian package installed on the host.
    fn host_package_version(&self, package: &str) -> Result<String, ImageError>;
    /// Every package installed in a tree, with its version.
    fn tree_packages(&self, root: &Path) -> Result<BTreeMap<String, String>, ImageError>;
    /// The agent's own `--version` answer, if it gives one.
    fn agent_version(&self, agent: &Path) -> Option<String>;
}

/// The real toolchain: `scripts/build-kernel.sh`, `scripts/build-rootfs.sh`
/// (mmdebstrap, make, mkfs.ext4, debugfs) and `dpkg-query`.
#[derive(Debug, Clone)]
pub struct ScriptToolchain {
    scripts_dir: PathBuf,
}

impl ScriptToolchain {
    /// Uses the scripts in `recipe_dir/scripts`.
    pub fn new(recipe_dir: &Path) -> Self {
        Self {
            scripts_dir: recipe_dir.join("scripts"),
        }
    }

    fn run_script(&self, step: &str, script: &str, args: &[String]) -> Result<(), ImageError> {
        let path = self.scripts_dir.join(script);
        let status = Command::new("bash")
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .status()
            .map_err(|source| ImageError::ToolSpawn {
                program: path.display().to_string(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(ImageError::ToolFailed {
                step: step.to_owned(),
                status: status.to_string(),
            })
        }
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

impl Toolchain for ScriptToolchain {
    fn build_kernel(&self, job: &KernelJob<'_>) -> Result<(), ImageError> {
        let args = vec![
            "--fragment".into(),
            p(job.fragment),
            "--source".into(),
            p(job.source_tarball),
            "--out".into(),
            p(job.out_dir),
            "--work".into(),
            p(job.work_dir),
            "--jobs".into(),
            job.jobs.to_string(),
            "--epoch".into(),
            job.epoch.to_string(),
        ];
        self.run_script("kernel build", "build-kernel.sh", &args)
    }

    fn fetch_debian_kernel(&self, job: &DebianKernelJob<'_>) -> Result<(), ImageError> {
        let args = vec![
            "--package".into(),
            job.package.to_owned(),
            "--version".into(),
            job.version.to_owned(),
            "--busybox-version".into(),
            job.busybox_version.to_owned(),
            "--out".into(),
            p(job.out_dir),
            "--work".into(),
            p(job.work_dir),
            "--epoch".into(),
            job.epoch.to_string(),
        ];
        self.run_script("Debian kernel", "debian-kernel.sh", &args)
    }

    fn candidate_version(&self, package: &str) -> Result<String, ImageError> {
        let out = Command::new("apt-cache")
            .args(["policy", package])
            .stderr(Stdio::null())
            .output()
            .map_err(|source| ImageError::ToolSpawn {
                program: "apt-cache".into(),
                source,
            })?;
        match parse_candidate(&String::from_utf8_lossy(&out.stdout)) {
            Some(v) if out.status.success() => Ok(v),
            _ => Err(ImageError::ToolFailed {
                step: format!(
                    "apt-cache policy {package}: apt knows no version of it (run apt-get update)"
                ),
                status: out.status.to_string(),
            }),
        }
    }

    fn build_rootfs_base(&self, job: &BaseJob<'_>) -> Result<(), ImageError> {
        let mut args = vec![
            "base".into(),
            "--suite".into(),
            job.debian.suite.clone(),
            "--variant".into(),
            job.debian.variant.clone(),
            "--packages".into(),
            job.debian.packages.join(","),
            "--hostname".into(),
            job.hostname.to_owned(),
            "--out".into(),
            p(job.out_dir),
            "--epoch".into(),
            job.epoch.to_string(),
        ];
        for mirror in &job.debian.mirrors {
            args.push("--mirror".into());
            args.push(mirror.clone());
        }
        if let Some(setup) = job.setup_script {
            args.push("--setup".into());
            args.push(p(setup));
        }
        self.run_script("rootfs base (mmdebstrap)", "build-rootfs.sh", &args)
    }

    fn build_rootfs_image(&self, job: &RootfsImageJob<'_>) -> Result<(), ImageError> {
        let args = vec![
            "image".into(),
            "--base".into(),
            p(job.base_dir),
            "--agent".into(),
            p(job.agent),
            "--out".into(),
            p(job.out_file),
            "--work".into(),
            p(job.work_dir),
            "--uuid".into(),
            job.uuid.to_owned(),
            "--hash-seed".into(),
            job.hash_seed.to_owned(),
            "--headroom-mib".into(),
            job.headroom_mib.to_string(),
            "--epoch".into(),
            job.epoch.to_string(),
        ];
        self.run_script("rootfs image (mkfs.ext4)", "build-rootfs.sh", &args)
    }

    fn host_package_version(&self, package: &str) -> Result<String, ImageError> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .stderr(Stdio::null())
            .output()
            .map_err(|source| ImageError::ToolSpawn {
                program: "dpkg-query".into(),
                source,
            })?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || version.is_empty() {
            return Err(ImageError::ToolFailed {
                step: format!(
                    "dpkg-query {package} (is it installed? `scripts/setup.sh --kernel-build` installs what compiling the kernel needs)"
                ),
                status: out.status.to_string(),
            });
        }
        Ok(version)
    }

    fn tree_packages(&self, root: &Path) -> Result<BTreeMap<String, String>, ImageError> {
        let admindir = root.join("var/lib/dpkg");
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}", admindir.display()))
            .args(["-W", "-f=${Package}\t${Version}\n"])
            .output()
            .map_err(|source| ImageError::ToolSpawn {
                program: "dpkg-query".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(ImageError::ToolFailed {
                step: format!("dpkg-query --admindir={}", admindir.display()),
                status: out.status.to_string(),
            });
        }
        Ok(parse_package_list(&String::from_utf8_lossy(&out.stdout)))
    }

    fn agent_version(&self, agent: &Path) -> Option<String> {
        let mut child = Command::new(agent)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?.trim();
        // `locale2b-agent 0.1.0` -> `0.1.0`
        let version = line.rsplit(' ').next().unwrap_or(line);
        (!version.is_empty()).then(|| version.to_owned())
    }
}

/// The `Candidate:` of `apt-cache policy` output, unless it is `(none)`.
pub(crate) fn parse_candidate(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// Parses `name\tversion` lines.
pub(crate) fn parse_package_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dpkg_query_output() {
        let m = parse_package_list("bash\t5.2.15-2+b7\npython3\t3.11.2-1+b1\n\nbroken line\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["python3"], "3.11.2-1+b1");
    }

    #[test]
    fn parses_apt_cache_policy_candidates() {
        let text = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-3\n  Version table:\n";
        assert_eq!(parse_candidate(text).as_deref(), Some("6.1.192-3"));
        assert_eq!(
            parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_candidate(""), None);
    }
}
