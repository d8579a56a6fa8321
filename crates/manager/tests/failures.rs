//! Failure injection: every broken start gives a clear error and leaves
//! nothing behind (no process, no sandbox or workspace directory).

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use common::*;
use locale2b_manager::{CreateSandbox, ManagerError};
use locale2b_vmm::{SnapshotFiles, VmHandle, VmProcess, VmSpec, Vmm, VmmKind};
use std::path::Path;

fn assert_clean(base: &Path) {
    let leftovers: Vec<_> = files_under(base)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(base).unwrap();
            // The empty top-level directories and the key file are expected.
            !(rel == Path::new("sandboxes") || rel == Path::new("workspaces"))
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(
        pids_mentioning(base.to_str().unwrap()).is_empty(),
        "VMM processes left"
    );
}

/// Installs a template named `name` whose files are given.
fn template(base: &Path, name: &str, kernel: Option<&Path>, rootfs: &Path) {
    let dir = base.join("images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(k) = kernel {
        std::os::unix::fs::symlink(k, dir.join("vmlinux")).unwrap();
    }
    std::os::unix::fs::symlink(rootfs, dir.join("rootfs.ext4")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"kernel":{"sha256":"x"},"rootfs":{"sha256":"y"}}"#,
    )
    .unwrap();
}

fn create(template: &str) -> CreateSandbox {
    CreateSandbox {
        template: Some(template.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_kernel_is_a_clear_error() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    template(base.path(), "nokernel", None, &image.join("rootfs.ext4"));
    let m = manager(base.config()).await;
    let err = m.create(create("nokernel")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::NotFound {
                kind: "template",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("locale2b image build"), "{err}");
    let err = m.create(create("no-such-template")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::NotFound {
                kind: "template",
                ..
            }
        ),
        "{err:?}"
    );
    assert_clean(base.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rootfs_fails_fast_with_console_tail() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let junk = base.path().join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 8 << 20]).unwrap();
    template(base.path(), "corrupt", Some(&image.join("vmlinux")), &junk);
    let m = manager(base.config()).await;
    let started = std::time::Instant::now();
    let err = m.create(create("corrupt")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ManagerError::Vm { .. }), "{err:?}");
    assert!(msg.contains("exited during boot"), "{msg}");
    assert!(
        started.elapsed().as_secs() < 100,
        "should fail before the boot timeout"
    );
    std::fs::remove_file(&junk).unwrap();
    assert_clean(base.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmm_that_exits_at_once_is_a_clear_error() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let fake = base.path().join("fake-qemu");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake qemu: cannot start' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut config = base.config();
    config.vmm.qemu_bin = fake.clone();
    let m = manager(config).await;
    let err = m.create(CreateSandbox::default()).await.unwrap_err();
    let msg = format!(
        "{err}: {:?}",
        std::error::Error::source(&err).map(ToString::to_string)
    );
    assert!(matches!(err, ManagerError::Vm { .. }), "{err:?}");
    assert!(
        msg.contains("fake qemu: cannot start") || msg.contains("exit"),
        "{msg}"
    );
    std::fs::remove_file(&fake).unwrap();
    assert_clean(base.path());
}

/// Boots the real image with an init that only waits, so no agent ever
/// answers (a test seam around the real qemu backend: the VM is real).
#[derive(Debug)]
struct SleepingInit(std::sync::Arc<dyn Vmm>);

#[async_trait::async_trait]
impl Vmm for SleepingInit {
    fn kind(&self) -> VmmKind {
        self.0.kind()
    }
    async fn start(&self, spec: &VmSpec) -> locale2b_vmm::Result<Box<dyn VmHandle>> {
        let mut spec = spec.clone();
        // `cat` reading the silent console blocks forever (kernel options with
        // `=` reach init as environment, not arguments).
        spec.extra_boot_args = "init=/bin/cat".into();
        self.0.start(&spec).await
    }
    async fn restore(
        &self,
        spec: &VmSpec,
        s: &SnapshotFiles,
    ) -> locale2b_vmm::Result<Box<dyn VmHandle>> {
        self.0.restore(spec, s).await
    }
    async fn attach(
        &self,
        spec: &VmSpec,
        p: &VmProcess,
    ) -> locale2b_vmm::Result<Box<dyn VmHandle>> {
        self.0.attach(spec, p).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_never_answers_times_out_and_is_cleaned_up() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let mut config = base.config();
    config.manager.boot_timeout_sec = 10;
    let (vmm, report) = locale2b_manager::backend::build(&config.vmm, &config.manager)
        .await
        .unwrap();
    let config = std::sync::Arc::new(config.manager);
    let vmm: std::sync::Arc<dyn Vmm> = std::sync::Arc::new(SleepingInit(vmm));
    let m = locale2b_manager::SandboxManager::open(
        config,
        vmm,
        locale2b_manager::backend::accel_name(&report),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = m.create(CreateSandbox::default()).await.unwrap_err();
    assert!(matches!(err, ManagerError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("guest agent"), "{err}");
    assert!(started.elapsed().as_secs() >= 10);
    assert!(m.list().await.is_empty());
    assert_clean(base.path());
}
