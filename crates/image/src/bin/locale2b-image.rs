//! `locale2b-image prepare`: the stages of an image build that do not need
//! the guest agent (the kernel and the Debian tree), into the build cache.
//!
//! A small binary of its own so that the quick start can run these stages
//! (mmdebstrap, the Debian kernel download) while `cargo` is still compiling
//! the `locale2b` binary and the agent; the `locale2b image build` that
//! follows finds them cached. Reads the same configuration as the server
//! (`LOCALE2B_BASE_DIR`, `LOCALE2B_CACHE_DIR`) and `LOCALE2B_RECIPE_DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use locale2b_image::{prepare, BuildRequest, KernelChoice, Progress, ScriptToolchain};

const USAGE: &str = "usage: locale2b-image prepare [--template NAME] [--kernel auto|build|debian] \
                     [--recipe-dir DIR] [--jobs N]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locale2b-image: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("prepare") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => return Err(USAGE.into()),
    }
    let mut template = "default".to_owned();
    let mut kernel = KernelChoice::Auto;
    let mut recipe_dir = std::env::var_os("LOCALE2B_RECIPE_DIR").map(PathBuf::from);
    let mut jobs = 2;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--template" => template = value()?,
            "--kernel" => {
                kernel = match value()?.as_str() {
                    "auto" => KernelChoice::Auto,
                    "build" => KernelChoice::Build,
                    "debian" => KernelChoice::Debian,
                    other => {
                        return Err(format!(
                            "--kernel {other:?}: expected auto, build or debian"
                        ))
                    }
                }
            }
            "--recipe-dir" => recipe_dir = Some(PathBuf::from(value()?)),
            "--jobs" => {
                jobs = value()?
                    .parse()
                    .map_err(|_| "--jobs needs a number".to_owned())?
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let recipe_dir = match recipe_dir {
        Some(dir) => dir,
        None => locale2b_image::find_recipe_dir(&[
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
            std::env::current_dir().unwrap_or_default(),
        ])
        .ok_or("cannot find the image recipe (image/templates, scripts/); pass --recipe-dir")?,
    };
    let config = locale2b_config::Config::from_env().map_err(|e| e.to_string())?;
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.parse().map_err(|_| "SOURCE_DATE_EPOCH is not a number")?),
        _ => None,
    };
    let req = BuildRequest {
        recipe_dir: recipe_dir.clone(),
        template,
        agent: PathBuf::new(),
        images_dir: PathBuf::new(),
        cache_dir: config.manager.cache_dir(),
        force: false,
        source_date_epoch,
        jobs,
        kernel,
    };
    let tools = ScriptToolchain::new(&recipe_dir);
    let out = prepare(&req, &tools, &Progress::new(false)).map_err(|e| e.to_string())?;
    println!(
        "prepared: kernel ({}) {}, Debian tree {}, in {:.1}s",
        out.kernel_source.as_str(),
        if out.kernel_cached { "cached" } else { "built" },
        if out.base_cached { "cached" } else { "built" },
        out.elapsed_secs
    );
    Ok(())
}
