//! `manifest.json`: what an image is made of and how to check it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Mismatch};
use crate::hash::sha256_file;

/// File name of the manifest inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the kernel inside an image directory.
pub const KERNEL_FILE: &str = "vmlinux";
/// File name of the initramfs inside an image directory (Debian kernels only).
pub const INITRD_FILE: &str = "initrd";
/// File name of the root filesystem inside an image directory.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
/// Current manifest schema.
pub const SCHEMA: u32 = 1;

/// The manifest of one built image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version ([`SCHEMA`]).
    pub schema: u32,
    /// Template the image was built from.
    pub template: TemplateInfo,
    /// Hash over every input; the image's cache key.
    pub input_hash: String,
    /// Build metadata.
    pub build: BuildInfo,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The root filesystem.
    pub rootfs: RootfsInfo,
    /// The guest agent baked into the rootfs.
    pub agent: AgentInfo,
    /// Debian packages.
    pub debian: DebianInfo,
}

/// Template name and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateInfo {
    /// Template name.
    pub name: String,
    /// Template version.
    pub version: String,
}

/// When and how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// `SOURCE_DATE_EPOCH` used for every timestamp in the artifacts.
    pub source_date_epoch: u64,
    /// The same instant as RFC 3339 UTC.
    pub timestamp: String,
    /// Builder that wrote the manifest.
    pub builder: String,
    /// Seconds each stage took when it was really built (cached stages keep the
    /// time of their original build).
    pub durations_secs: Durations,
}

/// Stage durations in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    /// Kernel configure + compile.
    pub kernel: f64,
    /// mmdebstrap + tree configuration.
    pub rootfs_base: f64,
    /// Agent copy + mkfs.ext4.
    pub rootfs_image: f64,
}

/// Kernel artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// File name in the image directory.
    pub file: String,
    /// Always `vmlinux` (uncompressed ELF with the PVH note).
    pub format: String,
    /// `make kernelrelease`.
    pub version: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Debian package it came from: the source package of a compiled
    /// kernel, the kernel image package of a Debian one.
    pub source_package: String,
    /// Its version.
    pub source_version: String,
    /// Kernel cache key.
    pub input_hash: String,
    /// Where it came from (manifests without the field: `build`).
    #[serde(default)]
    pub source: KernelSource,
    /// The initramfs that loads a Debian kernel's modules; none for a
    /// compiled kernel (everything it needs is built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<InitrdInfo>,
}

/// Where an image's kernel came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelSource {
    /// Compiled from Debian's kernel source with the template's fragment:
    /// minimal, everything built in, boots fastest.
    #[default]
    Build,
    /// Debian's prebuilt kernel package with an initramfs loading its
    /// modules: no compile, so the first image takes seconds.
    Debian,
}

impl KernelSource {
    /// `build` or `debian`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Debian => "debian",
        }
    }
}

/// The initramfs of a Debian kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdInfo {
    /// File name in the image directory.
    pub file: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The modules it loads, in order.
    pub modules: Vec<String>,
    /// Version of the `busybox-static` package it runs.
    pub busybox_version: String,
}

/// Root filesystem artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsInfo {
    /// File name in the image directory.
    pub file: String,
    /// Always `ext4`.
    pub format: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Apparent size in bytes (the file is sparse).
    pub size: u64,
    /// Filesystem UUID.
    pub uuid: String,
    /// Cache key of the Debian tree it was made from.
    pub base_hash: String,
}

/// Guest agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    /// Path inside the guest.
    pub path: String,
    /// `locale2b-agent --version`, when the binary answers it.
    pub version: Option<String>,
    /// SHA-256 of the binary.
    pub sha256: String,
}

/// Debian packages in the rootfs and on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianInfo {
    /// Suite.
    pub suite: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Packages the template asked for.
    pub requested: Vec<String>,
    /// Every package installed in the rootfs with its version.
    pub installed: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    ///
    /// # Errors
    /// [`ImageError::Io`] or [`ImageError::Manifest`].
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ImageError::io("read", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest { path, source })
    }

    /// Writes `dir/manifest.json` atomically (temp file + rename).
    ///
    /// # Errors
    /// [`ImageError::Io`] or [`ImageError::Manifest`].
    pub fn save(&self, dir: &Path) -> Result<(), ImageError> {
        let path = dir.join(MANIFEST_FILE);
        let mut text =
            serde_json::to_string_pretty(self).map_err(|source| ImageError::Manifest {
                path: path.clone(),
                source,
            })?;
        text.push('\n');
        let tmp = dir.join(".manifest.json.tmp");
        std::fs::write(&tmp, text).map_err(|e| ImageError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ImageError::io("rename", &path, e))
    }

    /// Checks that the kernel and rootfs in `dir` have the sizes the manifest records.
    /// Cheap; used on cache hits.
    pub fn sizes_match(&self, dir: &Path) -> bool {
        let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).ok();
        self.artifacts()
            .into_iter()
            .all(|(file, _, len)| size(file) == Some(len))
    }

    /// Every artifact as (file, sha256, size): kernel, initrd if any, rootfs.
    pub fn artifacts(&self) -> Vec<(&str, &str, u64)> {
        let mut v = vec![(
            self.kernel.file.as_str(),
            self.kernel.sha256.as_str(),
            self.kernel.size,
        )];
        if let Some(i) = &self.kernel.initrd {
            v.push((i.file.as_str(), i.sha256.as_str(), i.size));
        }
        v.push((
            self.rootfs.file.as_str(),
            self.rootfs.sha256.as_str(),
            self.rootfs.size,
        ));
        v
    }
}

/// Recomputes the SHA-256 and size of every artifact in `dir` and compares them
/// with `dir/manifest.json`.
///
/// # Errors
/// [`ImageError::Mismatch`] listing every differing artifact; I/O and parse errors
/// as such (a missing artifact is a mismatch, not an I/O error).
pub fn verify(dir: &Path) -> Result<Manifest, ImageError> {
    let manifest = Manifest::load(dir)?;
    let mut mismatches = Vec::new();
    for (file, sha, size) in manifest.artifacts() {
        let path = dir.join(file);
        let actual_size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                mismatches.push(Mismatch {
                    file: file.to_owned(),
                    expected: format!("sha256:{sha}"),
                    actual: "missing".into(),
                });
                continue;
            }
            Err(e) => return Err(ImageError::io("stat", path, e)),
        };
        if actual_size != size {
            mismatches.push(Mismatch {
                file: file.to_owned(),
                expected: format!("size:{size}"),
                actual: format!("size:{actual_size}"),
            });
            continue;
        }
        let actual = sha256_file(&path)?;
        if actual != sha {
            mismatches.push(Mismatch {
                file: file.to_owned(),
                expected: format!("sha256:{sha}"),
                actual: format!("sha256:{actual}"),
            });
        }
    }
    if mismatches.is_empty() {
        Ok(manifest)
    } else {
        Err(ImageError::Mismatch {
            dir: dir.to_owned(),
            mismatches,
        })
    }
}

/// Formats a Unix time as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::sha256_hex;

    /// A manifest describing files `vmlinux` and `rootfs.ext4` written into `dir`.
    pub(crate) fn sample(dir: &Path) -> Manifest {
        let kernel = b"kernel bytes".to_vec();
        let rootfs = vec![0u8; 8192];
        std::fs::write(dir.join(KERNEL_FILE), &kernel).expect("write kernel");
        std::fs::write(dir.join(ROOTFS_FILE), &rootfs).expect("write rootfs");
        Manifest {
            schema: SCHEMA,
            template: TemplateInfo {
                name: "default".into(),
                version: "1".into(),
            },
            input_hash: "ab".repeat(32),
            build: BuildInfo {
                source_date_epoch: 1_700_000_000,
                timestamp: rfc3339_utc(1_700_000_000),
                builder: "test".into(),
                durations_secs: Durations {
                    kernel: 1.0,
                    rootfs_base: 2.0,
                    rootfs_image: 3.0,
                },
            },
            kernel: KernelInfo {
                file: KERNEL_FILE.into(),
                format: "vmlinux".into(),
                version: "6.1.0".into(),
                sha256: sha256_hex(&kernel),
                size: kernel.len() as u64,
                source_package: "linux-source-6.1".into(),
                source_version: "6.1.0-1".into(),
                input_hash: "cd".repeat(32),
                source: KernelSource::Build,
                initrd: None,
            },
            rootfs: RootfsInfo {
                file: ROOTFS_FILE.into(),
                format: "ext4".into(),
                sha256: sha256_hex(&rootfs),
                size: rootfs.len() as u64,
                uuid: "00000000-0000-4000-8000-000000000000".into(),
                base_hash: "ef".repeat(32),
            },
            agent: AgentInfo {
                path: "/usr/local/bin/locale2b-agent".into(),
                version: None,
                sha256: "00".repeat(32),
            },
            debian: DebianInfo {
                suite: "bookworm".into(),
                variant: "minbase".into(),
                requested: vec!["python3".into()],
                installed: BTreeMap::from([("python3".into(), "3.11.2-1+b1".into())]),
            },
        }
    }

    #[test]
    fn save_load_round_trip_and_verify_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        m.save(dir.path()).expect("save");
        assert_eq!(Manifest::load(dir.path()).expect("load"), m);
        assert!(m.sizes_match(dir.path()));
        assert_eq!(verify(dir.path()).expect("verify"), m);
    }

    #[test]
    fn verify_reports_changed_and_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        m.save(dir.path()).expect("save");
        // Same size, different content: only the checksum can tell.
        std::fs::write(dir.path().join(KERNEL_FILE), b"kernel bytez").expect("write");
        std::fs::remove_file(dir.path().join(ROOTFS_FILE)).expect("rm");
        let err = verify(dir.path()).expect_err("must mismatch");
        let ImageError::Mismatch { mismatches, .. } = &err else {
            panic!("wrong error {err:?}")
        };
        assert_eq!(mismatches.len(), 2);
        assert_eq!(mismatches[0].file, KERNEL_FILE);
        assert!(mismatches[0].actual.starts_with("sha256:"));
        assert_eq!(mismatches[1].actual, "missing");
        assert!(
            err.to_string().contains("do not match manifest.json"),
            "{err}"
        );
    }

    #[test]
    fn an_initrd_is_verified_and_old_manifests_read_as_compiled_kernels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = sample(dir.path());
        let old = serde_json::to_value(&m).expect("json");
        assert!(old["kernel"].get("initrd").is_none());
        let mut legacy = old.clone();
        legacy["kernel"]
            .as_object_mut()
            .expect("obj")
            .remove("source");
        let parsed: Manifest = serde_json::from_value(legacy).expect("old manifest");
        assert_eq!(parsed.kernel.source, KernelSource::Build);

        std::fs::write(dir.path().join(INITRD_FILE), b"cpio").expect("write");
        m.kernel.source = KernelSource::Debian;
        m.kernel.initrd = Some(InitrdInfo {
            file: INITRD_FILE.into(),
            sha256: sha256_hex(b"cpio"),
            size: 4,
            modules: vec!["virtio_blk.ko".into()],
            busybox_version: "1:1.35.0-4".into(),
        });
        m.save(dir.path()).expect("save");
        assert_eq!(verify(dir.path()).expect("verify"), m);
        std::fs::write(dir.path().join(INITRD_FILE), b"cpix").expect("write");
        let err = verify(dir.path()).expect_err("changed initrd");
        assert!(err.to_string().contains(INITRD_FILE), "{err}");
        std::fs::remove_file(dir.path().join(INITRD_FILE)).expect("rm");
        assert!(!m.sizes_match(dir.path()));
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
