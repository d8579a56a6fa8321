//! The build: three cached stages, a manifest, and installation.
//!
//! Cache layout (`cache_dir`):
//! ```text
//! kernel/<kernel-hash>/{vmlinux,config,release,meta.json}
//! rootfs-base/<base-hash>/{root/,meta.json}
//! images/<input-hash>/{vmlinux,rootfs.ext4,manifest.json}
//! work/                     scratch space of stages in progress
//! ```
//! A stage's directory is complete when its `meta.json` (or `manifest.json`)
//! exists: stages build into `<hash>.partial` and are renamed into place.
//! Installed images: `images_dir/<template>/{vmlinux,rootfs.ext4,manifest.json}`,
//! hard links to the cache when possible (copies otherwise), manifest last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::hash::{sha256_file, uuid_from_hex, InputHasher};
use crate::manifest::{
    rfc3339_utc, AgentInfo, BuildInfo, DebianInfo, Durations, InitrdInfo, KernelInfo, KernelSource,
    Manifest, RootfsInfo, TemplateInfo, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE,
    SCHEMA,
};
use crate::progress::{human_size, Progress};
use crate::template::Template;
use crate::toolchain::{BaseJob, DebianKernelJob, KernelJob, RootfsImageJob, Toolchain};

const KERNEL_SCRIPT: &str = "scripts/build-kernel.sh";
const DEBIAN_KERNEL_SCRIPT: &str = "scripts/debian-kernel.sh";
/// The static shell and `insmod` of a Debian kernel's initramfs.
const BUSYBOX_PACKAGE: &str = "busybox-static";
const ROOTFS_SCRIPT: &str = "scripts/build-rootfs.sh";
/// Where the agent lives inside the guest.
pub const AGENT_GUEST_PATH: &str = "/usr/local/bin/locale2b-agent";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Directory holding `image/` (templates, kernel fragment) and `scripts/`.
    pub recipe_dir: PathBuf,
    /// Template name.
    pub template: String,
    /// Guest agent binary to bake in.
    pub agent: PathBuf,
    /// `$BASE/images`: the template is installed into `images_dir/<template>/`.
    pub images_dir: PathBuf,
    /// Build cache.
    pub cache_dir: PathBuf,
    /// Rebuild every stage even when cached.
    pub force: bool,
    /// Overrides the template's `source_date_epoch`.
    pub source_date_epoch: Option<u64>,
    /// Parallel make jobs for the kernel.
    pub jobs: u32,
    /// Which kernel to use.
    pub kernel: KernelChoice,
}

/// Which kernel an image gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KernelChoice {
    /// The compiled kernel when it is in the cache, else Debian's prebuilt
    /// kernel when the template names one (seconds instead of minutes),
    /// else compile.
    #[default]
    Auto,
    /// Compile the template's minimal kernel (cached).
    Build,
    /// Debian's prebuilt kernel package with an initramfs.
    Debian,
}

/// What the kernel stage is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelInputs {
    /// A compiled kernel: the version of the source package.
    Build {
        /// `linux-source-*` version.
        source_version: String,
    },
    /// Debian's kernel: the versions apt downloads.
    Debian {
        /// Kernel (meta) package.
        package: String,
        /// Its version.
        version: String,
        /// `busybox-static` version.
        busybox_version: String,
    },
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Where the image was installed.
    pub install_dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Kernel came from the cache.
    pub kernel_cached: bool,
    /// Debian tree came from the cache.
    pub base_cached: bool,
    /// The whole image came from the cache (nothing was built).
    pub image_cached: bool,
    /// Wall time of this call, seconds.
    pub elapsed_secs: f64,
}

/// The three cache keys of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputHashes {
    /// Kernel stage key.
    pub kernel: String,
    /// Debian tree stage key.
    pub base: String,
    /// Whole image key (the manifest's `input_hash`).
    pub image: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KernelMeta {
    release: String,
    source_version: String,
    duration_secs: f64,
    #[serde(default)]
    source: KernelSource,
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    modules: Vec<String>,
    #[serde(default)]
    busybox_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BaseMeta {
    installed: BTreeMap<String, String>,
    duration_secs: f64,
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io("read", path, e))
}

/// The kernel stage's cache key.
fn kernel_hash(
    recipe_dir: &Path,
    template: &Template,
    inputs: &KernelInputs,
    epoch: u64,
) -> Result<String, ImageError> {
    let epoch_text = epoch.to_string();
    match inputs {
        KernelInputs::Build { source_version } => {
            let mut k = InputHasher::new("locale2b/kernel/v1");
            k.field(
                "fragment",
                &read(&recipe_dir.join("image").join(&template.kernel.fragment))?,
            )
            .field("script", &read(&recipe_dir.join(KERNEL_SCRIPT))?)
            .text("source_package", &template.kernel.source_package)
            .text("source_version", source_version)
            .text(
                "source_tarball",
                &template.kernel.source_tarball.display().to_string(),
            )
            .text("epoch", &epoch_text);
            Ok(k.finish())
        }
        KernelInputs::Debian {
            package,
            version,
            busybox_version,
        } => {
            let mut k = InputHasher::new("locale2b/kernel-debian/v1");
            k.field("script", &read(&recipe_dir.join(DEBIAN_KERNEL_SCRIPT))?)
                .text("package", package)
                .text("version", version)
                .text("busybox_version", busybox_version)
                .text("epoch", &epoch_text);
            Ok(k.finish())
        }
    }
}

/// Computes the cache keys from the recipe files, the template, the agent's
/// checksum and what the kernel is made from.
///
/// # Errors
/// [`ImageError::Io`] when a recipe file cannot be read.
pub fn input_hashes(
    recipe_dir: &Path,
    template: &Template,
    agent_sha256: &str,
    kernel_inputs: &KernelInputs,
    epoch: u64,
) -> Result<InputHashes, ImageError> {
    let epoch_text = epoch.to_string();
    let kernel = kernel_hash(recipe_dir, template, kernel_inputs, epoch)?;

    let debian = serde_json::to_vec(&template.debian).unwrap_or_default();
    let rootfs = serde_json::to_vec(&(&template.rootfs.hostname, &template.rootfs.setup))
        .unwrap_or_default();
    let mut b = InputHasher::new("locale2b/rootfs-base/v1");
    b.field("debian", &debian)
        .field("rootfs", &rootfs)
        .field("script", &read(&recipe_dir.join(ROOTFS_SCRIPT))?)
        .text("epoch", &epoch_text);
    let base = b.finish();

    let mut i = InputHasher::new("locale2b/image/v1");
    i.text("kernel", &kernel)
        .text("base", &base)
        .text("agent_sha256", agent_sha256)
        .text("template", &template.name)
        .text("version", &template.version)
        .text("headroom_mib", &template.rootfs.headroom_mib.to_string());
    let image = i.finish();

    Ok(InputHashes {
        kernel,
        base,
        image,
    })
}

/// Why a cached Debian tree cannot be used as it is, when a root build
/// finds its system files no longer owned by root (a `chown -R` of the
/// cache): `mkfs.ext4 -d` copies owners as they are, and the guest's
/// `sudo` and every setuid program would break. `None` when it is fine, or
/// when the build does not run as root (then the tree's owners are not
/// root's to begin with).
fn tree_owners_lost(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    // `/proc/self` belongs to the process's effective user.
    if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
        return None;
    }
    for p in ["etc", "usr/bin", "etc/passwd"] {
        if let Ok(m) = std::fs::symlink_metadata(root.join(p)) {
            if m.uid() != 0 {
                return Some(format!(
                    "{} belongs to uid {}, not root (was the cache chown'ed?); building it again",
                    root.join(p).display(),
                    m.uid()
                ));
            }
        }
    }
    None
}

/// Builds (or fetches from the cache) the image of a template and installs it.
///
/// # Errors
/// Any [`ImageError`]: a missing template or agent, a failed stage, I/O.
pub fn build(
    req: &BuildRequest,
    tools: &dyn Toolchain,
    progress: &Progress,
) -> Result<BuildOutcome, ImageError> {
    let started = Instant::now();
    if !req.agent.is_file() {
        return Err(ImageError::AgentMissing {
            path: req.agent.clone(),
        });
    }
    let agent_sha256 = sha256_file(&req.agent)?;
    let Plan {
        template,
        epoch,
        kernel_inputs,
        hashes,
    } = plan(req, tools, progress, &agent_sha256)?;
    progress.step(format!(
        "template {} v{} (epoch {epoch}); input hash {}",
        template.name,
        template.version,
        short(&hashes.image)
    ));

    let install_dir = req.images_dir.join(&template.name);
    let image_dir = req.cache_dir.join("images").join(&hashes.image);
    if !req.force {
        if let Ok(manifest) = Manifest::load(&image_dir) {
            if manifest.sizes_match(&image_dir) {
                progress.step(format!("cache hit: {}", image_dir.display()));
                install(&image_dir, &install_dir)?;
                progress.step(format!("installed {}", install_dir.display()));
                return Ok(BuildOutcome {
                    install_dir,
                    manifest,
                    kernel_cached: true,
                    base_cached: true,
                    image_cached: true,
                    elapsed_secs: started.elapsed().as_secs_f64(),
                });
            }
        }
    }

    let Stages {
        kernel_dir,
        kernel_meta,
        kernel_cached,
        base_dir,
        base_meta,
        base_cached,
    } = run_stages(
        req,
        &template,
        tools,
        progress,
        &kernel_inputs,
        &hashes,
        epoch,
    )?;
    let work_root = req.cache_dir.join("work");

    // ext4 image with the agent, then the manifest.
    progress.step(format!(
        "rootfs image: agent {} + mkfs.ext4",
        short(&agent_sha256)
    ));
    let t = Instant::now();
    let partial = fresh_partial(&image_dir)?;
    let uuid = uuid_from_hex(&hashes.image);
    let hash_seed = uuid_from_hex(&crate::hash::sha256_hex(hashes.image.as_bytes()));
    let work = work_root.join(format!("image-{}", hashes.image));
    let rootfs_path = partial.join(ROOTFS_FILE);
    tools.build_rootfs_image(&RootfsImageJob {
        base_dir: &base_dir.join("root"),
        agent: &req.agent,
        out_file: &rootfs_path,
        work_dir: &work,
        uuid: &uuid,
        hash_seed: &hash_seed,
        headroom_mib: template.rootfs.headroom_mib,
        epoch,
    })?;
    expect_file("rootfs image", &rootfs_path)?;
    make_read_only(&rootfs_path)?;
    remove_dir(&work);
    let image_secs = t.elapsed().as_secs_f64();
    link_or_copy(&kernel_dir.join(KERNEL_FILE), &partial.join(KERNEL_FILE))?;
    let initrd = match kernel_meta.source {
        KernelSource::Build => None,
        KernelSource::Debian => {
            let path = partial.join(INITRD_FILE);
            link_or_copy(&kernel_dir.join(INITRD_FILE), &path)?;
            Some(InitrdInfo {
                file: INITRD_FILE.into(),
                sha256: sha256_file(&path)?,
                size: file_size(&path)?,
                modules: kernel_meta.modules.clone(),
                busybox_version: kernel_meta.busybox_version.clone().unwrap_or_default(),
            })
        }
    };

    let kernel_path = partial.join(KERNEL_FILE);
    let manifest = Manifest {
        schema: SCHEMA,
        template: TemplateInfo {
            name: template.name.clone(),
            version: template.version.clone(),
        },
        input_hash: hashes.image.clone(),
        build: BuildInfo {
            source_date_epoch: epoch,
            timestamp: rfc3339_utc(epoch),
            builder: concat!("locale2b-image ", env!("CARGO_PKG_VERSION")).to_owned(),
            durations_secs: Durations {
                kernel: round1(kernel_meta.duration_secs),
                rootfs_base: round1(base_meta.duration_secs),
                rootfs_image: round1(image_secs),
            },
        },
        kernel: KernelInfo {
            file: KERNEL_FILE.into(),
            format: "vmlinux".into(),
            version: kernel_meta.release.clone(),
            sha256: sha256_file(&kernel_path)?,
            size: file_size(&kernel_path)?,
            source_package: kernel_meta
                .package
                .clone()
                .unwrap_or_else(|| template.kernel.source_package.clone()),
            source_version: kernel_meta.source_version.clone(),
            input_hash: hashes.kernel.clone(),
            source: kernel_meta.source,
            initrd,
        },
        rootfs: RootfsInfo {
            file: ROOTFS_FILE.into(),
            format: "ext4".into(),
            sha256: sha256_file(&rootfs_path)?,
            size: file_size(&rootfs_path)?,
            uuid,
            base_hash: hashes.base.clone(),
        },
        agent: AgentInfo {
            path: AGENT_GUEST_PATH.into(),
            version: tools.agent_version(&req.agent),
            sha256: agent_sha256,
        },
        debian: DebianInfo {
            suite: template.debian.suite.clone(),
            variant: template.debian.variant.clone(),
            requested: template.debian.packages.clone(),
            installed: base_meta.installed.clone(),
        },
    };
    manifest.save(&partial)?;
    remove_dir(&image_dir);
    rename(&partial, &image_dir)?;
    progress.step(format!(
        "image: kernel {} ({}, {}), rootfs {} (sha256 {})",
        manifest.kernel.version,
        manifest.kernel.source.as_str(),
        human_size(manifest.kernel.size),
        human_size(manifest.rootfs.size),
        short(&manifest.rootfs.sha256)
    ));
    install(&image_dir, &install_dir)?;
    progress.step(format!("installed {}", install_dir.display()));
    Ok(BuildOutcome {
        install_dir,
        manifest,
        kernel_cached,
        base_cached,
        image_cached: false,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Installs an image directory (kernel, rootfs, manifest last) into `dest`,
/// replacing each file atomically. Running VMs keep the files they opened.
///
/// # Errors
/// [`ImageError::Io`].
pub fn install(src: &Path, dest: &Path) -> Result<(), ImageError> {
    mkdir(dest)?;
    for name in [KERNEL_FILE, INITRD_FILE, ROOTFS_FILE, MANIFEST_FILE] {
        let from = src.join(name);
        let to = dest.join(name);
        if name == INITRD_FILE && !from.exists() {
            // A compiled kernel has none; the manifest (written last) says so.
            continue;
        }
        if same_file(&from, &to) {
            continue;
        }
        let tmp = dest.join(format!(".{name}.install"));
        let _ = std::fs::remove_file(&tmp);
        link_or_copy(&from, &tmp)?;
        rename(&tmp, &to)?;
    }
    if !src.join(INITRD_FILE).exists() {
        let _ = std::fs::remove_file(dest.join(INITRD_FILE));
    }
    Ok(())
}

/// A build's template, its epoch, the kernel it gets and the cache keys.
struct Plan {
    template: Template,
    epoch: u64,
    kernel_inputs: KernelInputs,
    hashes: InputHashes,
}

fn plan(
    req: &BuildRequest,
    tools: &dyn Toolchain,
    progress: &Progress,
    agent_sha256: &str,
) -> Result<Plan, ImageError> {
    let (template, _) = Template::load(&req.recipe_dir, &req.template)?;
    let epoch = req.source_date_epoch.unwrap_or(template.source_date_epoch);
    let kernel_inputs = choose_kernel(req, &template, tools, epoch, progress)?;
    let hashes = input_hashes(
        &req.recipe_dir,
        &template,
        agent_sha256,
        &kernel_inputs,
        epoch,
    )?;
    Ok(Plan {
        template,
        epoch,
        kernel_inputs,
        hashes,
    })
}

/// What the kernel and Debian tree stages gave (built or from the cache).
struct Stages {
    kernel_dir: PathBuf,
    kernel_meta: KernelMeta,
    kernel_cached: bool,
    base_dir: PathBuf,
    base_meta: BaseMeta,
    base_cached: bool,
}

/// Runs (or takes from the cache) the two stages that do not need the
/// agent: the kernel and the Debian tree.
fn run_stages(
    req: &BuildRequest,
    template: &Template,
    tools: &dyn Toolchain,
    progress: &Progress,
    kernel_inputs: &KernelInputs,
    hashes: &InputHashes,
    epoch: u64,
) -> Result<Stages, ImageError> {
    let work_root = req.cache_dir.join("work");
    mkdir(&work_root)?;

    // Kernel.
    let kernel_dir = req.cache_dir.join("kernel").join(&hashes.kernel);
    let (kernel_meta, kernel_cached) =
        match load_meta::<KernelMeta>(&kernel_dir).filter(|_| !req.force) {
            Some(meta) if kernel_dir.join(KERNEL_FILE).is_file() => {
                progress.step(format!(
                    "kernel: cache hit {} ({})",
                    meta.release,
                    short(&hashes.kernel)
                ));
                (meta, true)
            }
            _ => {
                let t = Instant::now();
                let partial = fresh_partial(&kernel_dir)?;
                let work = work_root.join(format!("kernel-{}", hashes.kernel));
                let (source, package, source_version, busybox) = match kernel_inputs {
                    KernelInputs::Build { source_version } => {
                        progress.step(format!(
                            "kernel: building from {} {source_version} (several minutes)",
                            template.kernel.source_package
                        ));
                        tools.build_kernel(&KernelJob {
                            fragment: &req.recipe_dir.join("image").join(&template.kernel.fragment),
                            source_tarball: &template.kernel.source_tarball,
                            out_dir: &partial,
                            work_dir: &work,
                            epoch,
                            jobs: req.jobs.max(1),
                        })?;
                        (KernelSource::Build, None, source_version.clone(), None)
                    }
                    KernelInputs::Debian {
                        package,
                        version,
                        busybox_version,
                    } => {
                        progress.step(format!(
                            "kernel: Debian's {package} {version} with an initramfs (seconds)"
                        ));
                        tools.fetch_debian_kernel(&DebianKernelJob {
                            package,
                            version,
                            busybox_version,
                            out_dir: &partial,
                            work_dir: &work,
                            epoch,
                        })?;
                        expect_file("Debian kernel", &partial.join(INITRD_FILE))?;
                        make_read_only(&partial.join(INITRD_FILE))?;
                        (
                            KernelSource::Debian,
                            Some(package.clone()),
                            version.clone(),
                            Some(busybox_version.clone()),
                        )
                    }
                };
                let release_path = partial.join("release");
                let release = std::fs::read_to_string(&release_path)
                    .map_err(|_| ImageError::MissingOutput {
                        step: "kernel build".into(),
                        path: release_path,
                    })?
                    .trim()
                    .to_owned();
                expect_file("kernel build", &partial.join(KERNEL_FILE))?;
                make_read_only(&partial.join(KERNEL_FILE))?;
                let modules = std::fs::read_to_string(partial.join("modules"))
                    .map(|t| t.lines().map(str::to_owned).collect())
                    .unwrap_or_default();
                let meta = KernelMeta {
                    release,
                    source_version,
                    duration_secs: t.elapsed().as_secs_f64(),
                    source,
                    package,
                    modules,
                    busybox_version: busybox,
                };
                commit(&partial, &kernel_dir, &meta)?;
                remove_dir(&work);
                progress.step(format!(
                    "kernel: built {} in {:.0}s",
                    meta.release, meta.duration_secs
                ));
                (meta, false)
            }
        };

    // Debian tree.
    let base_dir = req.cache_dir.join("rootfs-base").join(&hashes.base);
    let owners_lost = tree_owners_lost(&base_dir.join("root"));
    if let Some(why) = &owners_lost {
        progress.step(format!("rootfs base: cached tree not used: {why}"));
    }
    let (base_meta, base_cached) =
        match load_meta::<BaseMeta>(&base_dir).filter(|_| !req.force && owners_lost.is_none()) {
            Some(meta) if base_dir.join("root").is_dir() => {
                progress.step(format!(
                    "rootfs base: cache hit, {} packages ({})",
                    meta.installed.len(),
                    short(&hashes.base)
                ));
                (meta, true)
            }
            _ => {
                progress.step(format!(
                    "rootfs base: mmdebstrap {} {} + {} packages",
                    template.debian.suite,
                    template.debian.variant,
                    template.debian.packages.len()
                ));
                let t = Instant::now();
                let partial = fresh_partial(&base_dir)?;
                let setup_path = work_root.join(format!("setup-{}.sh", hashes.base));
                let setup = template.setup_script();
                if let Some(script) = &setup {
                    std::fs::write(&setup_path, script)
                        .map_err(|e| ImageError::io("write", &setup_path, e))?;
                }
                let root = partial.join("root");
                tools.build_rootfs_base(&BaseJob {
                    debian: &template.debian,
                    hostname: &template.rootfs.hostname,
                    setup_script: setup.as_ref().map(|_| setup_path.as_path()),
                    out_dir: &root,
                    epoch,
                })?;
                if !root.is_dir() {
                    return Err(ImageError::MissingOutput {
                        step: "rootfs base".into(),
                        path: root,
                    });
                }
                let installed = tools.tree_packages(&root)?;
                let meta = BaseMeta {
                    installed,
                    duration_secs: t.elapsed().as_secs_f64(),
                };
                commit(&partial, &base_dir, &meta)?;
                let _ = std::fs::remove_file(&setup_path);
                progress.step(format!(
                    "rootfs base: {} packages in {:.0}s",
                    meta.installed.len(),
                    meta.duration_secs
                ));
                (meta, false)
            }
        };

    Ok(Stages {
        kernel_dir,
        kernel_meta,
        kernel_cached,
        base_dir,
        base_meta,
        base_cached,
    })
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareOutcome {
    /// The kernel it made ready.
    pub kernel_source: KernelSource,
    /// Kernel came from the cache.
    pub kernel_cached: bool,
    /// Debian tree came from the cache.
    pub base_cached: bool,
    /// Wall time, seconds.
    pub elapsed_secs: f64,
}

/// Runs the stages of [`build`] that do not need the agent (kernel, Debian
/// tree) into the cache, so that they can run while the agent is still
/// being compiled; a later [`build`] with the same request finds them
/// cached. `req.agent` and `req.images_dir` are not used.
///
/// # Errors
/// As [`build`].
pub fn prepare(
    req: &BuildRequest,
    tools: &dyn Toolchain,
    progress: &Progress,
) -> Result<PrepareOutcome, ImageError> {
    let started = Instant::now();
    // The image key needs the agent; the two stage keys do not.
    let p = plan(req, tools, progress, "")?;
    let stages = run_stages(
        req,
        &p.template,
        tools,
        progress,
        &p.kernel_inputs,
        &p.hashes,
        p.epoch,
    )?;
    Ok(PrepareOutcome {
        kernel_source: stages.kernel_meta.source,
        kernel_cached: stages.kernel_cached,
        base_cached: stages.base_cached,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Resolves [`KernelChoice`] into what the kernel stage is made from.
fn choose_kernel(
    req: &BuildRequest,
    template: &Template,
    tools: &dyn Toolchain,
    epoch: u64,
    progress: &Progress,
) -> Result<KernelInputs, ImageError> {
    let debian = |package: &str| -> Result<KernelInputs, ImageError> {
        Ok(KernelInputs::Debian {
            package: package.to_owned(),
            version: tools.candidate_version(package)?,
            busybox_version: tools.candidate_version(BUSYBOX_PACKAGE)?,
        })
    };
    let build = || -> Result<KernelInputs, ImageError> {
        Ok(KernelInputs::Build {
            source_version: tools.host_package_version(&template.kernel.source_package)?,
        })
    };
    match (req.kernel, template.kernel.package.as_deref()) {
        (KernelChoice::Build, _) | (KernelChoice::Auto, None) => build(),
        (KernelChoice::Debian, Some(package)) => debian(package),
        (KernelChoice::Debian, None) => Err(ImageError::TemplateValue {
            name: template.name.clone(),
            reason: "names no Debian kernel package (kernel.package)".into(),
        }),
        (KernelChoice::Auto, Some(package)) => {
            if let Ok(inputs) = build() {
                let key = kernel_hash(&req.recipe_dir, template, &inputs, epoch)?;
                let dir = req.cache_dir.join("kernel").join(key);
                if load_meta::<KernelMeta>(&dir).is_some() && dir.join(KERNEL_FILE).is_file() {
                    return Ok(inputs);
                }
            }
            progress.step(format!(
                "kernel: the compiled kernel is not built yet, so Debian's {package} is used \
                 (`locale2b image build --kernel build` compiles it: minutes, boots faster)"
            ));
            debian(package)
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| ImageError::io("copy to", to, e))
}

fn load_meta<T: for<'de> Deserialize<'de>>(dir: &Path) -> Option<T> {
    let bytes = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `meta.json` into `partial` and renames it to `dir`.
fn commit<T: Serialize>(partial: &Path, dir: &Path, meta: &T) -> Result<(), ImageError> {
    let path = partial.join("meta.json");
    let text = serde_json::to_vec_pretty(meta).map_err(|source| ImageError::Manifest {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(|e| ImageError::io("write", &path, e))?;
    remove_dir(dir);
    rename(partial, dir)
}

/// An empty `<dir>.partial` next to `dir`.
fn fresh_partial(dir: &Path) -> Result<PathBuf, ImageError> {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let partial = dir.with_file_name(name);
    remove_dir(&partial);
    mkdir(&partial)?;
    Ok(partial)
}

fn mkdir(dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io("create directory", dir, e))
}

fn remove_dir(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove directory");
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), ImageError> {
    std::fs::rename(from, to).map_err(|e| ImageError::io("rename into", to, e))
}

fn expect_file(step: &str, path: &Path) -> Result<(), ImageError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ImageError::MissingOutput {
            step: step.into(),
            path: path.to_owned(),
        })
    }
}

/// Cached artifacts are shared by hard links with installed images: mode 0444
/// so that nothing opens them for writing by accident.
fn make_read_only(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| ImageError::io("chmod", path, e))
}

fn file_size(path: &Path) -> Result<u64, ImageError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| ImageError::io("stat", path, e))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::manifest::verify;

    #[test]
    fn a_cached_tree_whose_owners_changed_is_not_used_by_a_root_build() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("usr/bin")).expect("usr/bin");
        let as_root = std::fs::metadata("/proc/self").expect("proc").uid() == 0;
        assert_eq!(tree_owners_lost(&root), None, "a tree the builder owns");
        if !as_root {
            // Only a root build can tell (and only it makes root trees).
            return;
        }
        std::os::unix::fs::chown(root.join("etc"), Some(4321), Some(4321)).expect("chown");
        let why = tree_owners_lost(&root).expect("owners lost");
        assert!(why.contains("uid 4321") && why.contains("etc"), "{why}");
    }

    /// Records every stage it runs and writes small stand-in artifacts.
    #[derive(Debug, Default)]
    struct FakeTools {
        calls: RefCell<Vec<&'static str>>,
    }

    impl FakeTools {
        fn take(&self) -> Vec<&'static str> {
            std::mem::take(&mut *self.calls.borrow_mut())
        }
    }

    impl Toolchain for FakeTools {
        fn build_kernel(&self, job: &KernelJob<'_>) -> Result<(), ImageError> {
            self.calls.borrow_mut().push("kernel");
            let fragment = std::fs::read(job.fragment).expect("fragment");
            std::fs::write(
                job.out_dir.join("vmlinux"),
                [b"ELF".as_slice(), &fragment].concat(),
            )
            .expect("w");
            std::fs::write(job.out_dir.join("config"), &fragment).expect("w");
            std::fs::write(job.out_dir.join("release"), "6.1.0-test\n").expect("w");
            Ok(())
        }
        fn fetch_debian_kernel(&self, job: &DebianKernelJob<'_>) -> Result<(), ImageError> {
            self.calls.borrow_mut().push("debian-kernel");
            std::fs::write(job.out_dir.join("vmlinux"), b"ELF debian").expect("w");
            std::fs::write(job.out_dir.join("initrd"), b"cpio").expect("w");
            std::fs::write(job.out_dir.join("config"), b"CONFIG_X=m\n").expect("w");
            std::fs::write(job.out_dir.join("modules"), "virtio.ko\nvirtio_blk.ko\n").expect("w");
            std::fs::write(job.out_dir.join("release"), "6.1.0-57-cloud-amd64\n").expect("w");
            Ok(())
        }
        fn candidate_version(&self, package: &str) -> Result<String, ImageError> {
            Ok(format!("{package}-1"))
        }
        fn build_rootfs_base(&self, job: &BaseJob<'_>) -> Result<(), ImageError> {
            self.calls.borrow_mut().push("base");
            std::fs::create_dir_all(job.out_dir.join("etc")).expect("mkdir");
            std::fs::write(job.out_dir.join("etc/hostname"), job.hostname).expect("w");
            Ok(())
        }
        fn build_rootfs_image(&self, job: &RootfsImageJob<'_>) -> Result<(), ImageError> {
            self.calls.borrow_mut().push("image");
            let agent = std::fs::read(job.agent).expect("agent");
            std::fs::write(job.out_file, [job.uuid.as_bytes(), &agent].concat()).expect("w");
            Ok(())
        }
        fn host_package_version(&self, _package: &str) -> Result<String, ImageError> {
            Ok("6.1.0-1".into())
        }
        fn tree_packages(&self, _root: &Path) -> Result<BTreeMap<String, String>, ImageError> {
            Ok(BTreeMap::from([("python3".into(), "3.11".into())]))
        }
        fn agent_version(&self, _agent: &Path) -> Option<String> {
            Some("0.0.1".into())
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        req: BuildRequest,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = dir.path().join("recipe");
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for rel in [
            "image/templates/default.toml",
            "image/kernel/locale2b.config",
            KERNEL_SCRIPT,
            DEBIAN_KERNEL_SCRIPT,
            ROOTFS_SCRIPT,
        ] {
            let to = recipe.join(rel);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(real.join(rel), &to).expect("copy recipe file");
        }
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent v1").expect("agent");
        let req = BuildRequest {
            recipe_dir: recipe,
            template: "default".into(),
            agent,
            images_dir: dir.path().join("base/images"),
            cache_dir: dir.path().join("cache"),
            force: false,
            source_date_epoch: None,
            jobs: 2,
            kernel: KernelChoice::Build,
        };
        Fixture { _dir: dir, req }
    }

    #[test]
    fn second_build_is_a_cache_hit_and_installs_verified_files() {
        let f = fixture();
        let tools = FakeTools::default();
        let first = build(&f.req, &tools, &Progress::quiet()).expect("first build");
        assert_eq!(tools.take(), ["kernel", "base", "image"]);
        assert!(!first.image_cached);
        assert_eq!(first.install_dir, f.req.images_dir.join("default"));
        let verified = verify(&first.install_dir).expect("installed image verifies");
        assert_eq!(verified.input_hash, first.manifest.input_hash);
        assert_eq!(verified.debian.installed["python3"], "3.11");
        assert_eq!(verified.agent.version.as_deref(), Some("0.0.1"));
        assert_eq!(verified.build.timestamp, "2023-11-14T22:13:20Z");

        // A fresh install dir with the same cache: nothing is built.
        let mut again = f.req.clone();
        again.images_dir = f.req.images_dir.with_file_name("other-images");
        let second = build(&again, &tools, &Progress::quiet()).expect("second build");
        assert!(tools.take().is_empty(), "cache hit must not run any stage");
        assert!(second.image_cached);
        assert_eq!(second.manifest, first.manifest);
        verify(&second.install_dir).expect("second install verifies");
    }

    #[test]
    fn agent_change_rebuilds_only_the_rootfs_image() {
        let f = fixture();
        let tools = FakeTools::default();
        let first = build(&f.req, &tools, &Progress::quiet()).expect("first build");
        tools.take();
        std::fs::write(&f.req.agent, b"agent v2").expect("new agent");
        let second = build(&f.req, &tools, &Progress::quiet()).expect("rebuild");
        assert_eq!(tools.take(), ["image"]);
        assert!(second.kernel_cached && second.base_cached && !second.image_cached);
        assert_ne!(second.manifest.input_hash, first.manifest.input_hash);
        assert_eq!(second.manifest.kernel.sha256, first.manifest.kernel.sha256);
        assert_ne!(second.manifest.rootfs.sha256, first.manifest.rootfs.sha256);
        assert_ne!(second.manifest.rootfs.uuid, first.manifest.rootfs.uuid);
        verify(&second.install_dir).expect("reinstalled image verifies");
    }

    #[test]
    fn fragment_change_rebuilds_kernel_but_not_the_debian_tree() {
        let f = fixture();
        let tools = FakeTools::default();
        build(&f.req, &tools, &Progress::quiet()).expect("first build");
        tools.take();
        let fragment = f.req.recipe_dir.join("image/kernel/locale2b.config");
        let mut text = std::fs::read_to_string(&fragment).expect("read");
        text.push_str("CONFIG_EXTRA=y\n");
        std::fs::write(&fragment, text).expect("write");
        let out = build(&f.req, &tools, &Progress::quiet()).expect("rebuild");
        assert_eq!(tools.take(), ["kernel", "image"]);
        assert!(!out.kernel_cached && out.base_cached);
    }

    #[test]
    fn force_rebuilds_everything() {
        let f = fixture();
        let tools = FakeTools::default();
        build(&f.req, &tools, &Progress::quiet()).expect("first build");
        tools.take();
        let mut req = f.req.clone();
        req.force = true;
        build(&req, &tools, &Progress::quiet()).expect("forced build");
        assert_eq!(tools.take(), ["kernel", "base", "image"]);
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let f = fixture();
        let mut req = f.req.clone();
        req.agent = req.agent.with_file_name("nope");
        let err = build(&req, &FakeTools::default(), &Progress::quiet()).expect_err("must fail");
        assert!(matches!(err, ImageError::AgentMissing { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains("cargo build --release -p locale2b-agent"));
    }

    #[test]
    fn input_hashes_separate_the_stages() {
        let f = fixture();
        let (t, _) = Template::load(&f.req.recipe_dir, "default").expect("template");
        let k = |v: &str| KernelInputs::Build {
            source_version: v.into(),
        };
        let base = input_hashes(&f.req.recipe_dir, &t, "a1", &k("6.1.0-1"), 1).expect("hash");
        let agent = input_hashes(&f.req.recipe_dir, &t, "a2", &k("6.1.0-1"), 1).expect("hash");
        assert_eq!(base.kernel, agent.kernel);
        assert_eq!(base.base, agent.base);
        assert_ne!(base.image, agent.image);
        let src = input_hashes(&f.req.recipe_dir, &t, "a1", &k("6.1.0-2"), 1).expect("hash");
        assert_ne!(base.kernel, src.kernel);
        assert_eq!(base.base, src.base);
        let mut t2 = t.clone();
        t2.rootfs.setup.push("true".into());
        let setup = input_hashes(&f.req.recipe_dir, &t2, "a1", &k("6.1.0-1"), 1).expect("hash");
        assert_eq!(base.kernel, setup.kernel);
        assert_ne!(base.base, setup.base);
        assert_ne!(base.image, setup.image);
        let epoch = input_hashes(&f.req.recipe_dir, &t, "a1", &k("6.1.0-1"), 2).expect("hash");
        assert_ne!(base.kernel, epoch.kernel);
        assert_ne!(base.base, epoch.base);
        let debian = KernelInputs::Debian {
            package: "linux-image-cloud-amd64".into(),
            version: "6.1.192-3".into(),
            busybox_version: "1:1.35.0-4".into(),
        };
        let deb = input_hashes(&f.req.recipe_dir, &t, "a1", &debian, 1).expect("hash");
        assert_ne!(base.kernel, deb.kernel);
        assert_eq!(
            base.base, deb.base,
            "the Debian tree does not depend on the kernel"
        );
        assert_ne!(base.image, deb.image);
    }

    #[test]
    fn auto_takes_debians_kernel_until_the_compiled_one_is_cached() {
        let f = fixture();
        let tools = FakeTools::default();
        let mut req = f.req.clone();
        req.kernel = KernelChoice::Auto;
        let first = build(&req, &tools, &Progress::quiet()).expect("first build");
        assert_eq!(tools.take(), ["debian-kernel", "base", "image"]);
        let k = &first.manifest.kernel;
        assert_eq!(k.source, KernelSource::Debian);
        assert_eq!(k.source_package, "linux-image-cloud-amd64");
        assert_eq!(k.source_version, "linux-image-cloud-amd64-1");
        let initrd = k.initrd.as_ref().expect("a Debian kernel has an initrd");
        assert_eq!(initrd.modules, ["virtio.ko", "virtio_blk.ko"]);
        verify(&first.install_dir).expect("verifies with its initrd");
        assert!(first.install_dir.join(INITRD_FILE).is_file());

        // The compiled kernel on request; afterwards auto prefers it and the
        // installed image loses its initrd.
        req.kernel = KernelChoice::Build;
        let built = build(&req, &tools, &Progress::quiet()).expect("compiled kernel");
        assert_eq!(tools.take(), ["kernel", "image"]);
        assert_eq!(built.manifest.kernel.source, KernelSource::Build);
        assert!(built.manifest.kernel.initrd.is_none());
        assert!(!built.install_dir.join(INITRD_FILE).exists());
        req.kernel = KernelChoice::Auto;
        let again = build(&req, &tools, &Progress::quiet()).expect("auto again");
        assert!(
            tools.take().is_empty(),
            "auto must reuse the compiled image"
        );
        assert_eq!(again.manifest, built.manifest);

        // Asking for Debian's again is a cache hit of the first image.
        req.kernel = KernelChoice::Debian;
        let deb = build(&req, &tools, &Progress::quiet()).expect("debian again");
        assert!(tools.take().is_empty());
        assert_eq!(deb.manifest, first.manifest);
        verify(&deb.install_dir).expect("reinstalled initrd verifies");
    }

    #[test]
    fn prepare_runs_the_stages_without_the_agent_and_build_finds_them_cached() {
        let f = fixture();
        let tools = FakeTools::default();
        let mut req = f.req.clone();
        req.kernel = KernelChoice::Auto;
        req.agent = PathBuf::new();
        let out = prepare(&req, &tools, &Progress::quiet()).expect("prepare");
        assert_eq!(tools.take(), ["debian-kernel", "base"]);
        assert_eq!(out.kernel_source, KernelSource::Debian);
        assert!(!out.kernel_cached && !out.base_cached);
        assert!(!f.req.images_dir.exists(), "prepare installs nothing");
        let again = prepare(&req, &tools, &Progress::quiet()).expect("prepare again");
        assert!(tools.take().is_empty() && again.kernel_cached && again.base_cached);

        req.agent = f.req.agent.clone();
        let built = build(&req, &tools, &Progress::quiet()).expect("build");
        assert_eq!(tools.take(), ["image"], "only the agent's stage is left");
        assert!(built.kernel_cached && built.base_cached);
        assert_eq!(built.manifest.kernel.source, KernelSource::Debian);
    }

    #[test]
    fn debian_kernel_without_a_package_is_a_clear_error() {
        let f = fixture();
        let path = f.req.recipe_dir.join("image/templates/default.toml");
        let text = std::fs::read_to_string(&path).expect("read");
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("package ="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, text).expect("write");
        let mut req = f.req.clone();
        req.kernel = KernelChoice::Debian;
        let err = build(&req, &FakeTools::default(), &Progress::quiet()).expect_err("no package");
        assert!(err.to_string().contains("kernel.package"), "{err}");
        req.kernel = KernelChoice::Auto;
        let tools = FakeTools::default();
        build(&req, &tools, &Progress::quiet()).expect("auto compiles");
        assert_eq!(tools.take(), ["kernel", "base", "image"]);
    }

    #[test]
    fn install_replaces_files_and_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        let m = crate::manifest::tests::sample(&src);
        m.save(&src).expect("save");
        let dest = dir.path().join("dest");
        install(&src, &dest).expect("install");
        install(&src, &dest).expect("install again");
        assert_eq!(verify(&dest).expect("verify"), m);
        assert!(same_file(&src.join(ROOTFS_FILE), &dest.join(ROOTFS_FILE)));
    }

    #[test]
    fn built_artifacts_are_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture();
        let out = build(&f.req, &FakeTools::default(), &Progress::quiet()).expect("build");
        for name in [KERNEL_FILE, ROOTFS_FILE] {
            let mode = std::fs::metadata(out.install_dir.join(name))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o444, "{name}");
        }
    }
}
