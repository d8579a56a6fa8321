//! `locale2b image ...`: build and verify guest images.
//!
//! This is the only place that reads the image pipeline's environment:
//! `LOCALE2B_BASE_DIR` (default /var/lib/firecracker-workspaces),
//! `LOCALE2B_CACHE_DIR` (default `$BASE/cache`), `LOCALE2B_RECIPE_DIR`,
//! `SOURCE_DATE_EPOCH` and `CI` (plain output).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use locale2b_config::Config;
use locale2b_image::{BuildRequest, KernelChoice, Progress, ScriptToolchain};

/// Image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build (or take from the cache) the kernel, rootfs and manifest of a
    /// template and install them to $LOCALE2B_BASE_DIR/images/<template>/.
    Build(BuildArgs),
    /// Recompute the checksums of an installed image and compare them with its
    /// manifest; exits non-zero on any mismatch.
    Verify(VerifyArgs),
}

/// `locale2b image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Template name (image/templates/<NAME>.toml).
    #[arg(long, default_value = "default")]
    template: String,
    /// Guest agent binary [default: <recipe dir>/target/release/locale2b-agent].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Rebuild every stage even when it is cached.
    #[arg(long)]
    force: bool,
    /// Directory holding image/ and scripts/ [default: this source checkout].
    #[arg(long, env = "LOCALE2B_RECIPE_DIR")]
    recipe_dir: Option<PathBuf>,
    /// Parallel jobs for the kernel build.
    #[arg(long, default_value_t = 2)]
    jobs: u32,
    /// Kernel: `build` compiles the template's minimal kernel (minutes,
    /// cached; boots fastest), `debian` takes Debian's prebuilt kernel
    /// package with an initramfs (seconds), `auto` the compiled one when it
    /// is cached, else Debian's.
    #[arg(long, value_enum, default_value_t = KernelArg::Auto)]
    kernel: KernelArg,
    /// Install into DIR/<template>/ instead of $LOCALE2B_BASE_DIR/images/.
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
}

/// `--kernel`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KernelArg {
    Auto,
    Build,
    Debian,
}

impl From<KernelArg> for KernelChoice {
    fn from(k: KernelArg) -> Self {
        match k {
            KernelArg::Auto => Self::Auto,
            KernelArg::Build => Self::Build,
            KernelArg::Debian => Self::Debian,
        }
    }
}

/// `locale2b image verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Template name.
    #[arg(long, default_value = "default")]
    template: String,
    /// Image directory to verify instead of $LOCALE2B_BASE_DIR/images/<template>.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs an image subcommand. The base and cache directories come from the
/// one configuration (`LOCALE2B_BASE_DIR`, `LOCALE2B_CACHE_DIR`).
pub fn run(cmd: ImageCommand, config: &Config) -> anyhow::Result<()> {
    let base_dir = config.manager.base_dir.clone();
    let cache_dir = config.manager.cache_dir();
    match cmd {
        ImageCommand::Build(args) => build(args, &base_dir, cache_dir),
        ImageCommand::Verify(args) => verify(args, &base_dir),
    }
}

fn build(args: BuildArgs, base_dir: &Path, cache_dir: PathBuf) -> anyhow::Result<()> {
    let recipe_dir = match args.recipe_dir {
        Some(dir) => dir,
        None => default_recipe_dir()?,
    };
    let agent = args
        .agent
        .unwrap_or_else(|| recipe_dir.join("target/release/locale2b-agent"));
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(
            v.parse::<u64>()
                .context("SOURCE_DATE_EPOCH is not a number")?,
        ),
        _ => None,
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let progress = Progress::new(std::io::stdout().is_terminal() && !ci);
    let req = BuildRequest {
        recipe_dir: recipe_dir.clone(),
        template: args.template,
        agent,
        images_dir: args.images_dir.unwrap_or_else(|| base_dir.join("images")),
        cache_dir,
        force: args.force,
        source_date_epoch,
        jobs: args.jobs,
        kernel: args.kernel.into(),
    };
    let tools = ScriptToolchain::new(&recipe_dir);
    let outcome = locale2b_image::build(&req, &tools, &progress).context("image build failed")?;
    let m = &outcome.manifest;
    println!(
        "{} {}: kernel {} ({}) {} sha256 {}; rootfs {} sha256 {}; {} in {:.1}s",
        if outcome.image_cached {
            "cached"
        } else {
            "built"
        },
        outcome.install_dir.display(),
        m.kernel.version,
        m.kernel.source.as_str(),
        locale2b_image::human_size(m.kernel.size),
        m.kernel.sha256,
        locale2b_image::human_size(m.rootfs.size),
        m.rootfs.sha256,
        if outcome.image_cached {
            "cache hit"
        } else {
            "build"
        },
        outcome.elapsed_secs,
    );
    Ok(())
}

fn verify(args: VerifyArgs, base_dir: &Path) -> anyhow::Result<()> {
    let dir = args
        .dir
        .unwrap_or_else(|| base_dir.join("images").join(&args.template));
    let m = locale2b_image::verify(&dir)
        .with_context(|| format!("verification of {} failed", dir.display()))?;
    println!(
        "ok {}: template {} v{}, kernel {} ({}) sha256 {}, rootfs sha256 {}, input hash {}",
        dir.display(),
        m.template.name,
        m.template.version,
        m.kernel.version,
        m.kernel.source.as_str(),
        m.kernel.sha256,
        m.rootfs.sha256,
        m.input_hash
    );
    Ok(())
}

/// The source checkout this binary was built from, if it still has the recipe.
fn default_recipe_dir() -> anyhow::Result<PathBuf> {
    locale2b_image::find_recipe_dir(&[
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        std::env::current_dir().unwrap_or_default(),
    ])
    .context("cannot find the image recipe (image/templates, scripts/); pass --recipe-dir or set LOCALE2B_RECIPE_DIR")
}
