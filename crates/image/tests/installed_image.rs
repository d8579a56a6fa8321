//! Checks against a really built image (see the skip/fail rule below).
//!
//! Image directory: `LOCALE2B_TEST_IMAGE_DIR`, else `$LOCALE2B_BASE_DIR/images/default`,
//! else /var/lib/firecracker-workspaces/images/default. When it is missing the
//! tests print `SKIPPED: ...` and pass, unless `LOCALE2B_REQUIRE_E2E=1`, in
//! which case they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use locale2b_image::{
    build, input_hashes, verify, BuildRequest, KernelChoice, KernelInputs, KernelSource, Manifest,
    Progress, ScriptToolchain, Template, Toolchain, INITRD_FILE, KERNEL_FILE,
};

use locale2b_testkit::image_path as image_dir;

/// Returns false (after reporting the skip) when the test cannot run here.
fn skip_or_fail(reason: &str) -> bool {
    locale2b_testkit::require_or_skip(reason);
    false
}

fn installed() -> Option<PathBuf> {
    let dir = image_dir();
    if dir.join("manifest.json").is_file() {
        Some(dir)
    } else {
        skip_or_fail(&format!(
            "no installed image at {} (run `locale2b image build`)",
            dir.display()
        ));
        None
    }
}

#[test]
fn installed_image_matches_its_manifest() {
    let Some(dir) = installed() else { return };
    let manifest = verify(&dir).expect("installed artifacts match manifest.json");
    assert_eq!(manifest.kernel.format, "vmlinux");
    match manifest.kernel.source {
        // The compiled kernel is minimal and needs no initramfs.
        KernelSource::Build => {
            assert!(
                manifest.kernel.size < 10_000_000,
                "vmlinux is {} bytes",
                manifest.kernel.size
            );
            assert!(manifest.kernel.initrd.is_none());
            assert!(
                !dir.join(INITRD_FILE).exists(),
                "stale initrd left installed"
            );
        }
        // Debian's kernel loads its virtio drivers from the initramfs.
        KernelSource::Debian => {
            let initrd = manifest
                .kernel
                .initrd
                .as_ref()
                .expect("Debian kernel without initrd");
            for m in [
                "virtio_mmio.ko",
                "virtio_blk.ko",
                "virtio_console.ko",
                "overlay.ko",
            ] {
                assert!(
                    initrd.modules.iter().any(|x| x == m),
                    "{m} not loaded: {:?}",
                    initrd.modules
                );
            }
            let cpio = std::fs::read(dir.join(INITRD_FILE)).expect("read initrd");
            assert_eq!(&cpio[..6], b"070701", "initrd must be a newc cpio archive");
        }
    }
    let head = std::fs::read(dir.join(KERNEL_FILE)).expect("read vmlinux");
    assert_eq!(&head[..4], b"\x7fELF", "vmlinux must be an ELF file");
    for pkg in [
        "python3",
        "python3-pip",
        "python3-venv",
        "git",
        "curl",
        "ca-certificates",
    ] {
        if manifest.template.name == "default" {
            assert!(
                manifest.debian.installed.contains_key(pkg),
                "{pkg} missing from the rootfs"
            );
        }
    }
    assert_eq!(manifest.agent.path, "/usr/local/bin/locale2b-agent");
}

#[test]
fn rebuild_with_unchanged_inputs_is_a_cache_hit() {
    let Some(dir) = installed() else { return };
    // Checksums are the other test's job (hashing 400 MB is slow in debug builds).
    let manifest = Manifest::load(&dir).expect("installed manifest");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache_dir = std::env::var_os("LOCALE2B_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("../../cache"));
    let tmp = tempfile::tempdir().expect("tempdir");

    // The agent exactly as baked into the installed rootfs.
    let agent = tmp.path().join("locale2b-agent");
    let status = Command::new("debugfs")
        .arg("-R")
        .arg(format!(
            "dump /usr/local/bin/locale2b-agent {}",
            agent.display()
        ))
        .arg(dir.join("rootfs.ext4"))
        .output()
        .expect("run debugfs");
    assert!(
        status.status.success() && agent.is_file(),
        "could not extract the agent from rootfs.ext4"
    );

    let tools = ScriptToolchain::new(&recipe);
    let (template, _) = Template::load(&recipe, &manifest.template.name).expect("template");
    let kernel_inputs = match &manifest.kernel.initrd {
        None => KernelInputs::Build {
            source_version: tools
                .host_package_version(&template.kernel.source_package)
                .expect("kernel source version"),
        },
        Some(initrd) => KernelInputs::Debian {
            package: manifest.kernel.source_package.clone(),
            version: manifest.kernel.source_version.clone(),
            busybox_version: initrd.busybox_version.clone(),
        },
    };
    let agent_sha = locale2b_image::hash::sha256_file(&agent).expect("hash agent");
    assert_eq!(
        agent_sha, manifest.agent.sha256,
        "extracted agent differs from the manifest"
    );
    let hashes = input_hashes(
        &recipe,
        &template,
        &agent_sha,
        &kernel_inputs,
        manifest.build.source_date_epoch,
    )
    .expect("input hashes");
    if hashes.image != manifest.input_hash {
        skip_or_fail("installed image was built from a different recipe (rebuild it with `locale2b image build`)");
        return;
    }
    if !cache_dir.join("images").join(&hashes.image).is_dir() {
        skip_or_fail(&format!(
            "no cache entry for the installed image under {}",
            cache_dir.display()
        ));
        return;
    }

    let req = BuildRequest {
        recipe_dir: recipe.clone(),
        template: manifest.template.name.clone(),
        agent,
        images_dir: tmp.path().join("images"),
        cache_dir,
        force: false,
        source_date_epoch: Some(manifest.build.source_date_epoch),
        jobs: 2,
        kernel: match manifest.kernel.source {
            KernelSource::Build => KernelChoice::Build,
            KernelSource::Debian => KernelChoice::Debian,
        },
    };
    let started = Instant::now();
    let outcome = build(&req, &tools, &Progress::quiet()).expect("cached build");
    let secs = started.elapsed().as_secs_f64();
    assert!(outcome.image_cached, "unchanged inputs must be a cache hit");
    assert!(secs < 30.0, "cache hit took {secs:.1}s");
    assert_eq!(outcome.manifest.input_hash, manifest.input_hash);
    let copy = Manifest::load(&outcome.install_dir).expect("temp install has a manifest");
    assert_eq!(copy, outcome.manifest);
    assert!(
        copy.sizes_match(&outcome.install_dir),
        "temp install has the manifest's files"
    );
    assert_eq!(copy.rootfs.sha256, manifest.rootfs.sha256);
}
