//! API-flow tests of the Firecracker driver.
//!
//! Every scenario runs against the fake API server (`fake_firecracker`
//! binary of this crate) and, when `LOCALE2B_FIRECRACKER_BIN` points to a
//! real Firecracker, unchanged against the real binary (`…::real` tests).
//! The real variant needs a kernel: `$LOCALE2B_TEST_IMAGE_DIR/vmlinux` (or
//! the default image directory). Guests need not boot: these tests check
//! API flows, files, sockets and processes, not guest behaviour.
//!
//! Each scenario also runs through a jailer (`…::jailed`): a stand-in
//! that does what Firecracker's jailer documents (copies the binary into
//! `<base>/<exec name>/<id>/root`, gives that root to the uid/gid, chroots
//! and drops to them; it also copies the fake's shared libraries, which the
//! real jailer, made for static binaries, does not need), so the fake runs
//! chrooted as an unprivileged user; needs root. With
//! `LOCALE2B_JAILER_BIN` and `LOCALE2B_FIRECRACKER_BIN` the real jailer
//! runs them (`…::real_jailed`).

use locale2b_vmm::firecracker::{FirecrackerConfig, FirecrackerVmm, BASE_BOOT_ARGS};
use locale2b_vmm::{DiskSpec, MemMib, SnapshotFiles, VmHandle, VmSpec, VmStatus, Vmm, VmmError};
use serde_json::{json, Value};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MEM_MIB: u32 = 128;

/// Where and against what one scenario runs.
/// The fake API server, an example target of this crate that `cargo test`
/// builds next to the test binaries (`target/<profile>/examples/`).
fn fake_firecracker() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("examples/fake_firecracker");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p locale2b-vmm --example fake_firecracker` \
         (a plain `cargo test -p locale2b-vmm` builds it)",
        bin.display()
    );
    bin
}

struct Harness {
    dir: tempfile::TempDir,
    binary: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    /// Requests can be checked (fake server only).
    fake: bool,
    /// Started through this jailer.
    jail: Option<locale2b_vmm::firecracker::JailerConfig>,
}

/// uid/gid the jailed scenarios drop to.
const JAIL_ID: u32 = 4321;

/// A stand-in for Firecracker's jailer, following its documented steps
/// (see the module docs); it ignores cgroups.
const FAKE_JAILER: &str = r#"
set -eu
while [ $# -gt 0 ]; do
  case "$1" in
    --id) id=$2; shift 2 ;;
    --exec-file) exe=$2; shift 2 ;;
    --uid) uid=$2; shift 2 ;;
    --gid) gid=$2; shift 2 ;;
    --chroot-base-dir) base=$2; shift 2 ;;
    --cgroup-version) shift 2 ;;
    --netns) netns=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "fake jailer: unknown argument $1" >&2; exit 2 ;;
  esac
done
name=$(basename "$exe")
root="$base/$name/$id/root"
mkdir -p "$root"
cp "$exe" "$root/$name"
for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
chown "$uid:$gid" "$root"
if [ -n "${netns:-}" ]; then
  exec nsenter --net="$netns" -- chroot --userspec="$uid:$gid" "$root" "/$name" --id "$id" "$@"
fi
exec chroot --userspec="$uid:$gid" "$root" "/$name" --id "$id" "$@"
"#;

impl Harness {
    fn fake() -> Self {
        let dir = tempdir();
        let kernel = dir.path().join("vmlinux");
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::write(&kernel, b"not really a kernel").expect("kernel");
        sparse(&rootfs, 16 << 20);
        Self {
            dir,
            binary: fake_firecracker(),
            kernel,
            rootfs,
            fake: true,
            jail: None,
        }
    }

    /// The fake API server started through the stand-in jailer.
    fn jailed() -> Option<Self> {
        if !nix_is_root() {
            locale2b_testkit::skip("jailed Firecracker tests need root (chroot, uid switch)");
            return None;
        }
        let mut h = Self::fake();
        let jailer = script(h.dir.path(), "fake-jailer", FAKE_JAILER);
        h.jail = Some(locale2b_vmm::firecracker::JailerConfig {
            chroot_base: h.dir.path().join("jail"),
            ..locale2b_vmm::firecracker::JailerConfig::new(jailer, JAIL_ID, JAIL_ID)
        });
        // The jail user must reach nothing outside its root; the kernel
        // link inside it must be readable.
        std::fs::set_permissions(&h.kernel, std::fs::Permissions::from_mode(0o444)).expect("chmod");
        Some(h)
    }

    /// A real Firecracker through a real jailer.
    fn real_jailed() -> Option<Self> {
        let Some(jailer) = std::env::var_os("LOCALE2B_JAILER_BIN") else {
            locale2b_testkit::skip("LOCALE2B_JAILER_BIN not set (a real jailer runs these too)");
            return None;
        };
        let mut h = Self::real()?;
        h.jail = Some(locale2b_vmm::firecracker::JailerConfig {
            chroot_base: h.dir.path().join("jail"),
            ..locale2b_vmm::firecracker::JailerConfig::new(jailer, JAIL_ID, JAIL_ID)
        });
        Some(h)
    }

    /// Host directory Firecracker's paths are relative to: the run
    /// directory, or the jail's root.
    fn root(&self, spec: &VmSpec) -> PathBuf {
        match &self.jail {
            Some(j) => j.chroot_root(&self.binary, &spec.sandbox_id),
            None => spec.run_dir.clone(),
        }
    }

    /// How Firecracker names file `name` of the VM root.
    fn vm_path(&self, name: &str) -> String {
        match &self.jail {
            Some(_) => format!("/{name}"),
            None => name.to_owned(),
        }
    }

    /// How Firecracker is told a host file outside the VM root: linked
    /// into the jail as `jail_name`, or by its absolute host path.
    fn outside(&self, host: &Path, jail_name: &str) -> String {
        match &self.jail {
            Some(_) => format!("/{jail_name}"),
            None => host.to_string_lossy().into_owned(),
        }
    }

    /// How Firecracker is told the kernel's path.
    fn kernel_in_vm(&self) -> String {
        match &self.jail {
            Some(_) => "/vmlinux".into(),
            None => self.kernel.to_string_lossy().into_owned(),
        }
    }

    fn real() -> Option<Self> {
        let Some(binary) = std::env::var_os("LOCALE2B_FIRECRACKER_BIN") else {
            locale2b_testkit::skip(
                "LOCALE2B_FIRECRACKER_BIN not set (a real Firecracker runs these too)",
            );
            return None;
        };
        let images = locale2b_testkit::image_dir()?;
        let kernel = images.join("vmlinux");
        let rootfs = images.join("rootfs.ext4");
        Some(Self {
            dir: tempdir(),
            binary: binary.into(),
            kernel,
            rootfs,
            fake: false,
            jail: None,
        })
    }

    fn config(&self) -> FirecrackerConfig {
        let mut cfg = FirecrackerConfig::new(&self.binary);
        if let Some(j) = &self.jail {
            cfg.use_jailer = true;
            cfg.jailer = Some(j.clone());
        }
        cfg
    }

    fn vmm(&self) -> FirecrackerVmm {
        FirecrackerVmm::new(self.config())
    }

    /// A spec with its own run directory and writable disk.
    fn spec(&self, name: &str) -> VmSpec {
        let run_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&run_dir).expect("run dir");
        let data = self.dir.path().join(format!("{name}-data.ext4"));
        if !data.exists() {
            sparse(&data, 64 << 20);
        }
        VmSpec {
            sandbox_id: format!("sb-{name}").parse().expect("sandbox id"),
            kernel: self.kernel.clone(),
            initrd: None,
            disks: vec![
                DiskSpec {
                    path: self.rootfs.clone(),
                    read_only: true,
                },
                DiskSpec {
                    path: data,
                    read_only: false,
                },
            ],
            memory: MemMib(MEM_MIB),
            vcpus: 1,
            extra_boot_args: "init=/usr/local/bin/locale2b-agent".into(),
            run_dir,
            guest_cid: 3,
            net: None,
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

fn tempdir() -> tempfile::TempDir {
    // Short paths: Unix socket paths are limited to 107 bytes.
    tempfile::Builder::new()
        .prefix("fc")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path)
        .expect("create")
        .set_len(len)
        .expect("set_len");
}

/// Requests the fake server received on `run_dir`'s API socket.
fn requests(run_dir: &Path) -> Vec<(String, String, Value)> {
    let text = std::fs::read_to_string(run_dir.join("firecracker.sock.requests.jsonl"))
        .expect("fake-firecracker request record");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("record line");
            (
                v["method"].as_str().expect("method").to_owned(),
                v["path"].as_str().expect("path").to_owned(),
                v["body"].clone(),
            )
        })
        .collect()
}

fn request_lines(reqs: &[(String, String, Value)]) -> Vec<String> {
    reqs.iter().map(|(m, p, _)| format!("{m} {p}")).collect()
}

fn body_of<'a>(reqs: &'a [(String, String, Value)], line: &str) -> &'a Value {
    &reqs
        .iter()
        .find(|(m, p, _)| format!("{m} {p}") == line)
        .unwrap_or_else(|| panic!("no request {line}"))
        .2
}

/// True while a process runs (not a zombie) with `pid`.
fn pid_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Live (non-zombie) processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(needle) && pid_running(pid) {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

async fn assert_gone(vm: &dyn VmHandle) {
    let p = vm.process().clone();
    assert!(
        eventually(Duration::from_secs(5), || !pid_running(p.pid)).await,
        "firecracker pid {} still running",
        p.pid
    );
    assert!(!p.control_path.exists(), "API socket left behind");
    assert!(!p.vsock_path.exists(), "vsock socket left behind");
    assert!(matches!(vm.status().await, VmStatus::Exited { .. }));
}

// ---------------------------------------------------------------- scenarios

async fn lifecycle(h: Harness) {
    let vmm = h.vmm();
    let spec = h.spec("life");
    let vm = vmm.start(&spec).await.expect("start");
    let p = vm.process().clone();
    assert!(pid_running(p.pid));
    assert_eq!(p.control_path, h.root(&spec).join("firecracker.sock"));
    assert_eq!(vm.vsock_path(), h.root(&spec).join("vsock.sock"));
    assert!(
        is_socket(vm.vsock_path()),
        "vsock socket exists after start"
    );
    assert_eq!(p.console_log, spec.run_dir.join("console.log"));
    assert!(p.console_log.exists());

    assert_eq!(vm.status().await, VmStatus::Running);
    vm.pause().await.expect("pause");
    assert_eq!(vm.status().await, VmStatus::Paused);

    let snap_dir = h.dir.path().join("snap");
    std::fs::create_dir(&snap_dir).expect("snap dir");
    let files = vm.snapshot(&snap_dir).await.expect("snapshot");
    assert_eq!(files.state, snap_dir.join("state"));
    assert_eq!(files.memory, snap_dir.join("memory"));
    assert!(std::fs::metadata(&files.state).expect("state file").len() > 0);
    assert_eq!(
        std::fs::metadata(&files.memory).expect("memory file").len(),
        u64::from(MEM_MIB) << 20
    );
    assert_eq!(
        vm.status().await,
        VmStatus::Paused,
        "stays paused after snapshot"
    );

    vm.resume().await.expect("resume");
    assert_eq!(vm.status().await, VmStatus::Running);

    vm.shutdown(Duration::from_millis(500))
        .await
        .expect("shutdown");
    assert_gone(vm.as_ref()).await;
    vm.shutdown(Duration::from_millis(100))
        .await
        .expect("shutdown is idempotent");
    vm.kill().await.expect("kill is idempotent");
    assert!(!vm.wait_exit().await.is_empty());
    assert!(processes_mentioning(&p.control_path.to_string_lossy()).is_empty());

    if h.fake {
        let reqs = requests(&h.root(&spec));
        assert_eq!(
            request_lines(&reqs)[..8],
            [
                "PUT /logger",
                "PUT /metrics",
                "PUT /machine-config",
                "PUT /boot-source",
                "PUT /drives/drive_0",
                "PUT /drives/drive_1",
                "PUT /vsock",
                "PUT /actions",
            ]
        );
        assert_eq!(
            body_of(&reqs, "PUT /logger")["log_path"],
            json!(h.vm_path("fc-logger.log"))
        );
        assert_eq!(
            body_of(&reqs, "PUT /machine-config"),
            &json!({"vcpu_count": 1, "mem_size_mib": MEM_MIB, "smt": false})
        );
        let boot = body_of(&reqs, "PUT /boot-source");
        assert_eq!(boot["kernel_image_path"], json!(h.kernel_in_vm()));
        assert_eq!(
            boot["boot_args"],
            json!(format!(
                "{BASE_BOOT_ARGS} init=/usr/local/bin/locale2b-agent"
            ))
        );
        assert!(!boot["boot_args"].as_str().expect("args").contains("root="));
        assert_eq!(
            body_of(&reqs, "PUT /drives/drive_0"),
            &json!({"drive_id": "drive_0", "path_on_host": h.vm_path("drive_0"), "is_root_device": true, "is_read_only": true})
        );
        assert_eq!(
            body_of(&reqs, "PUT /drives/drive_1"),
            &json!({"drive_id": "drive_1", "path_on_host": h.vm_path("drive_1"), "is_root_device": false, "is_read_only": false})
        );
        assert_eq!(
            body_of(&reqs, "PUT /vsock"),
            &json!({"guest_cid": 3, "uds_path": h.vm_path("vsock.sock")})
        );
        assert_eq!(reqs[7].2, json!({"action_type": "InstanceStart"}));
        let patches: Vec<&Value> = reqs
            .iter()
            .filter(|r| r.0 == "PATCH")
            .map(|r| &r.2)
            .collect();
        assert_eq!(
            patches,
            [&json!({"state": "Paused"}), &json!({"state": "Resumed"})]
        );
        assert_eq!(
            body_of(&reqs, "PUT /snapshot/create"),
            &json!({
                "snapshot_type": "Full",
                "snapshot_path": h.outside(&files.state, "snapshot-state"),
                "mem_file_path": h.outside(&files.memory, "snapshot-memory"),
            })
        );
        assert_eq!(
            reqs.last().expect("requests").2,
            json!({"action_type": "SendCtrlAltDel"})
        );
    }
}

async fn missing_kernel(h: Harness) {
    let mut spec = h.spec("nokernel");
    spec.kernel = h.dir.path().join("no-such-vmlinux");
    let err = h
        .vmm()
        .start(&spec)
        .await
        .expect_err("start without kernel");
    match &err {
        VmmError::Api {
            api,
            request,
            message,
        } => {
            assert_eq!(*api, "firecracker");
            assert_eq!(request, "PUT /boot-source");
            assert!(!message.is_empty());
            assert!(err.to_string().contains(message.as_str()), "{err}");
        }
        // In a jail the kernel must be linked in first, so a missing one
        // is found before Firecracker is asked.
        VmmError::MissingFile {
            what: "kernel",
            path,
        } if h.jail.is_some() => {
            assert_eq!(*path, spec.kernel);
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let sock = h.root(&spec).join("firecracker.sock");
    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(
            &sock.to_string_lossy()
        )
        .is_empty())
        .await,
        "firecracker left running after a failed start"
    );
    assert!(!sock.exists());
}

async fn initrd(h: Harness) {
    // A missing initrd is refused at PUT /boot-source, like a missing kernel.
    let mut spec = h.spec("noinitrd");
    spec.initrd = Some(h.dir.path().join("no-such-initrd"));
    let err = h
        .vmm()
        .start(&spec)
        .await
        .expect_err("start without initrd");
    assert!(
        matches!(&err, VmmError::Api { request, message, .. }
            if request == "PUT /boot-source" && message.contains("initrd"))
            || (h.jail.is_some() && matches!(&err, VmmError::MissingFile { what: "initrd", .. })),
        "{err:?}"
    );
    if !h.fake {
        return;
    }
    // An initrd travels as initrd_path next to the kernel.
    let mut spec = h.spec("initrd");
    let initrd = h.dir.path().join("initrd.cpio");
    std::fs::write(&initrd, b"070701 stand-in").expect("initrd");
    spec.initrd = Some(initrd.clone());
    let vm = h.vmm().start(&spec).await.expect("start with an initrd");
    let reqs = requests(&h.root(&spec));
    let boot = body_of(&reqs, "PUT /boot-source");
    assert_eq!(boot["initrd_path"], json!(h.outside(&initrd, "initrd")));
    assert_eq!(boot["kernel_image_path"], json!(h.kernel_in_vm()));
    vm.kill().await.expect("kill");
}

/// A network namespace with a tap device `tap0`, made for one test and
/// deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new() -> Option<Self> {
        if !nix_is_root() {
            locale2b_testkit::skip("network namespace tests need root");
            return None;
        }
        let name = format!("l2bt-fc-{}", std::process::id() ^ rand_u32());
        let ns = Self(name);
        for args in [
            vec!["netns", "add", ns.0.as_str()],
            vec![
                "-n",
                ns.0.as_str(),
                "tuntap",
                "add",
                "dev",
                "tap0",
                "mode",
                "tap",
            ],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(42);
    h.finish() as u32
}

/// The inode of a network namespace file (`/proc/<pid>/ns/net` or a
/// `/run/netns` handle): equal inodes = the same namespace.
fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("netns file").ino()
}

async fn network(h: Harness) {
    let Some(ns) = TestNetns::new() else {
        return;
    };
    let mut spec = h.spec("net");
    let net = locale2b_vmm::NetSpec {
        netns: ns.path(),
        tap: "tap0".into(),
        mac: "02:4c:32:62:00:02".into(),
    };
    spec.net = Some(net.clone());
    let vm = h.vmm().start(&spec).await.expect("start with a NIC");
    let in_ns = |pid: u32| netns_inode(Path::new(&format!("/proc/{pid}/ns/net")));
    assert_eq!(
        in_ns(vm.process().pid),
        netns_inode(&ns.path()),
        "Firecracker runs in the sandbox's namespace"
    );
    assert_ne!(in_ns(vm.process().pid), in_ns(std::process::id()));
    if h.fake {
        let reqs = requests(&h.root(&spec));
        let nic = body_of(&reqs, "PUT /network-interfaces/eth0");
        assert_eq!(
            *nic,
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": net.mac})
        );
        let at = |what: &str| {
            reqs.iter()
                .position(|(m, p, _)| format!("{m} {p}") == what)
                .expect(what)
        };
        assert!(
            at("PUT /network-interfaces/eth0") < at("PUT /actions"),
            "the NIC is configured before InstanceStart"
        );
    }
    // A snapshot is loaded by a process in the same namespace (Firecracker
    // re-opens the tap by name there).
    vm.pause().await.expect("pause");
    let snap = h.dir.path().join("net-snap");
    std::fs::create_dir_all(&snap).expect("snapshot dir");
    let files = vm.snapshot(&snap).await.expect("snapshot");
    vm.kill().await.expect("kill");
    let restored = h
        .vmm()
        .restore(&spec, &files)
        .await
        .expect("restore with a NIC");
    assert_eq!(in_ns(restored.process().pid), netns_inode(&ns.path()));
    restored.kill().await.expect("kill");
    // Without a NIC nothing about networks is sent and the VMM stays here.
    let plain = h.spec("nonet");
    let vm = h.vmm().start(&plain).await.expect("start without a NIC");
    assert_eq!(in_ns(vm.process().pid), in_ns(std::process::id()));
    if h.fake {
        let reqs = requests(&h.root(&plain));
        assert!(
            !reqs
                .iter()
                .any(|(_, p, _)| p.starts_with("/network-interfaces")),
            "{reqs:?}"
        );
    }
    vm.kill().await.expect("kill");
}

async fn snapshot_requires_pause(h: Harness) {
    let spec = h.spec("snaprun");
    let vm = h.vmm().start(&spec).await.expect("start");
    let dir = h.dir.path().join("snaprun-snap");
    std::fs::create_dir(&dir).expect("dir");
    let err = vm.snapshot(&dir).await.expect_err("snapshot while running");
    assert!(
        matches!(err, VmmError::InvalidState { op: "snapshot", .. }),
        "{err:?}"
    );
    assert!(!dir.join("memory").exists());
    vm.kill().await.expect("kill");
    assert_gone(vm.as_ref()).await;
    let err = vm.pause().await.expect_err("pause after kill");
    assert!(
        matches!(err, VmmError::InvalidState { op: "pause", .. }),
        "{err:?}"
    );
}

/// Boots, snapshots, kills; returns the snapshot.
async fn make_snapshot(h: &Harness, name: &str) -> (VmSpec, SnapshotFiles) {
    let spec = h.spec(name);
    let vm = h.vmm().start(&spec).await.expect("start");
    vm.pause().await.expect("pause");
    let dir = h.dir.path().join(format!("{name}-snap"));
    std::fs::create_dir(&dir).expect("snap dir");
    let files = vm.snapshot(&dir).await.expect("snapshot");
    vm.kill().await.expect("kill");
    assert_gone(vm.as_ref()).await;
    (spec, files)
}

async fn restore(h: Harness) {
    let (orig, files) = make_snapshot(&h, "orig").await;
    // Restore into another sandbox's run directory, over a stale vsock socket.
    let mut spec = h.spec("clone");
    spec.disks[0] = orig.disks[0].clone();
    let stale = h.root(&spec).join("vsock.sock");
    std::fs::create_dir_all(h.root(&spec)).expect("VM root");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("stale socket"));
    assert!(is_socket(&stale));

    let vm = h.vmm().restore(&spec, &files).await.expect("restore");
    assert_eq!(vm.status().await, VmStatus::Running);
    assert_eq!(vm.vsock_path(), h.root(&spec).join("vsock.sock"));
    assert!(is_socket(vm.vsock_path()));
    assert!(
        !orig.run_dir.join("vsock.sock").exists(),
        "socket must follow the new run dir"
    );
    vm.pause().await.expect("pause restored VM");
    assert_eq!(vm.status().await, VmStatus::Paused);
    vm.shutdown(Duration::from_millis(200))
        .await
        .expect("shutdown");
    assert_gone(vm.as_ref()).await;

    if h.fake {
        let reqs = requests(&h.root(&spec));
        assert_eq!(
            request_lines(&reqs)[..3],
            ["PUT /logger", "PUT /metrics", "PUT /snapshot/load"]
        );
        assert_eq!(
            reqs[2].2,
            json!({
                "snapshot_path": h.outside(&files.state, "snapshot-state"),
                "mem_backend": {"backend_type": "File", "backend_path": h.outside(&files.memory, "snapshot-memory")},
                "resume_vm": true,
            })
        );
    }
}

/// `snapshot_vsock_override` sends `vsock_override` (Firecracker 1.17+).
async fn restore_with_vsock_override(h: Harness) {
    let (_, files) = make_snapshot(&h, "ovr").await;
    let spec = h.spec("ovr2");
    let mut cfg = h.config();
    cfg.snapshot_vsock_override = true;
    let vm = FirecrackerVmm::new(cfg)
        .restore(&spec, &files)
        .await
        .expect("restore with vsock_override");
    assert!(is_socket(&h.root(&spec).join("vsock.sock")));
    assert_eq!(vm.status().await, VmStatus::Running);
    vm.kill().await.expect("kill");
    assert_gone(vm.as_ref()).await;
    if h.fake {
        let reqs = requests(&h.root(&spec));
        assert_eq!(
            body_of(&reqs, "PUT /snapshot/load")["vsock_override"],
            json!({"uds_path": h.vm_path("vsock.sock")})
        );
    }
}

/// Two clones of one snapshot at once: each in its own run directory with
/// its own socket, the snapshot's memory file mapped, never written.
async fn clone_from_template(h: Harness) {
    let (orig, files) = make_snapshot(&h, "tpl").await;
    let before = std::fs::read(&files.memory).expect("memory");
    let vmm = h.vmm();
    assert!(vmm.can_clone());
    assert!(
        vmm.identity().starts_with("firecracker "),
        "{}",
        vmm.identity()
    );
    let mut clones = Vec::new();
    for name in ["c1", "c2"] {
        let mut spec = h.spec(name);
        spec.disks[0] = orig.disks[0].clone();
        let vm = vmm.clone_from(&spec, &files).await.expect("clone");
        assert_eq!(vm.status().await, VmStatus::Running);
        assert_eq!(vm.vsock_path(), h.root(&spec).join("vsock.sock"));
        assert!(is_socket(vm.vsock_path()));
        clones.push((spec, vm));
    }
    for (spec, vm) in &clones {
        vm.kill().await.expect("kill");
        assert_gone(vm.as_ref()).await;
        if h.fake {
            let reqs = requests(&h.root(spec));
            let load = body_of(&reqs, "PUT /snapshot/load");
            assert_eq!(
                load["mem_backend"],
                json!({"backend_type": "File", "backend_path": h.outside(&files.memory, "snapshot-memory")})
            );
        }
    }
    assert_eq!(
        std::fs::read(&files.memory).expect("memory"),
        before,
        "a clone wrote the template's memory file"
    );
}

async fn restore_failure(h: Harness) {
    let (_, files) = make_snapshot(&h, "broken").await;
    std::fs::write(&files.state, b"this is not a snapshot").expect("corrupt state");
    let spec = h.spec("broken2");
    let err = h
        .vmm()
        .restore(&spec, &files)
        .await
        .expect_err("restore of a corrupt snapshot");
    eprintln!("restore of a corrupt snapshot: {err}");
    match &err {
        VmmError::Api {
            request, message, ..
        } => {
            assert_eq!(request, "PUT /snapshot/load");
            assert!(message.contains("snapshot"), "{message}");
        }
        other => panic!("expected the load to be refused, got {other:?}"),
    }
    let sock = h.root(&spec).join("firecracker.sock");
    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(
            &sock.to_string_lossy()
        )
        .is_empty())
        .await,
        "firecracker left running after a failed restore"
    );
    assert!(!sock.exists());
    assert!(!h.root(&spec).join("vsock.sock").exists());

    let missing = SnapshotFiles {
        state: h.dir.path().join("nope/state"),
        memory: files.memory.clone(),
        ram_in_state: false,
    };
    let err = h
        .vmm()
        .restore(&spec, &missing)
        .await
        .expect_err("missing state");
    assert!(
        matches!(
            err,
            VmmError::MissingFile {
                what: "snapshot state",
                ..
            }
        ),
        "{err:?}"
    );
}

async fn attach(h: Harness) {
    let spec = h.spec("attach");
    let vmm = h.vmm();
    let vm = vmm.start(&spec).await.expect("start");
    let process = vm.process().clone();
    drop(vm); // "server restart": the handle goes, the VM stays
    assert!(
        pid_running(process.pid),
        "dropping the handle must not kill the VM"
    );

    let mut reused = process.clone();
    reused.start_time += 1;
    let err = vmm
        .attach(&spec, &reused)
        .await
        .expect_err("pid reuse must be refused");
    assert!(
        matches!(&err, VmmError::ExitedEarly { reason, .. } if reason.contains("another process")),
        "{err:?}"
    );

    let vm = vmm.attach(&spec, &process).await.expect("attach");
    assert_eq!(vm.process(), &process);
    assert_eq!(vm.status().await, VmStatus::Running);
    vm.pause().await.expect("pause attached VM");
    assert_eq!(vm.status().await, VmStatus::Paused);
    vm.kill().await.expect("kill");
    assert_gone(vm.as_ref()).await;
    assert!(!vm.wait_exit().await.is_empty());

    let err = vmm
        .attach(&spec, &process)
        .await
        .expect_err("attach to a dead VM");
    assert!(matches!(err, VmmError::ExitedEarly { .. }), "{err:?}");
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn fake() {
                super::$name(super::Harness::fake()).await;
            }

            #[tokio::test]
            async fn real() {
                if let Some(h) = super::Harness::real() {
                    super::$name(h).await;
                }
            }

            #[tokio::test]
            async fn jailed() {
                if let Some(h) = super::Harness::jailed() {
                    super::$name(h).await;
                }
            }

            #[tokio::test]
            async fn real_jailed() {
                if let Some(h) = super::Harness::real_jailed() {
                    super::$name(h).await;
                }
            }
        }
    )*};
}

mod firecracker {
    use super::*;
    both!(
        lifecycle,
        missing_kernel,
        initrd,
        snapshot_requires_pause,
        restore,
        restore_failure,
        restore_with_vsock_override,
        clone_from_template,
        attach,
        network
    );
}

// ------------------------------------------------- process-level failures

/// Writes an executable script. Retries the start on ETXTBSY (another test
/// thread may fork while the script is open for writing).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

async fn start_retrying(
    vmm: &FirecrackerVmm,
    spec: &VmSpec,
) -> Result<Box<dyn VmHandle>, VmmError> {
    for _ in 0..5 {
        match vmm.start(spec).await {
            Err(VmmError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => continue,
            other => return other,
        }
    }
    vmm.start(spec).await
}

#[tokio::test]
async fn firecracker_api_socket_timeout_kills_the_process() {
    let h = Harness::fake();
    let pids = h.dir.path().join("pids");
    let bin = script(
        h.dir.path(),
        "silent-fc",
        &format!(
            "echo $$ > {p}\nsleep 30 &\necho $! >> {p}\nwait",
            p = pids.display()
        ),
    );
    let mut cfg = FirecrackerConfig::new(&bin);
    cfg.api_socket_timeout = Duration::from_millis(300);
    let vmm = FirecrackerVmm::new(cfg);
    let spec = h.spec("silent");
    let started = Instant::now();
    let err = start_retrying(&vmm, &spec)
        .await
        .expect_err("no API socket");
    assert!(
        matches!(&err, VmmError::Timeout { what, after } if what.contains("API socket") && *after == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("pid file")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2, "script and its child");
    for pid in pids {
        assert!(
            eventually(Duration::from_secs(5), || !pid_running(pid)).await,
            "process {pid} survived the timeout"
        );
    }
}

#[tokio::test]
async fn firecracker_early_exit_reports_the_log_tail() {
    let h = Harness::fake();
    let bin = script(
        h.dir.path(),
        "dying-fc",
        "echo 'Error: fatal: bad configuration' >&2\nexit 3",
    );
    let vmm = FirecrackerVmm::new(FirecrackerConfig::new(&bin));
    let err = start_retrying(&vmm, &h.spec("dying"))
        .await
        .expect_err("early exit");
    match &err {
        VmmError::ExitedEarly { reason, log_tail } => {
            assert_eq!(reason, "exit status 3");
            assert!(log_tail.contains("fatal: bad configuration"), "{log_tail}");
        }
        other => panic!("expected ExitedEarly, got {other:?}"),
    }
}

#[tokio::test]
async fn firecracker_missing_binary_and_disk() {
    let h = Harness::fake();
    let vmm = FirecrackerVmm::new(FirecrackerConfig::new(h.dir.path().join("no-fc")));
    let err = vmm
        .start(&h.spec("nobin"))
        .await
        .expect_err("missing binary");
    assert!(matches!(err, VmmError::BinaryMissing { .. }), "{err:?}");

    let mut spec = h.spec("nodisk");
    spec.disks[1].path = h.dir.path().join("no-disk.ext4");
    let err = h.vmm().start(&spec).await.expect_err("missing disk");
    assert!(
        matches!(&err, VmmError::MissingFile { what: "disk", path } if *path == spec.disks[1].path),
        "{err:?}"
    );
}

#[tokio::test]
async fn firecracker_jailer_needs_a_jailer_binary() {
    let h = Harness::fake();
    let mut cfg = FirecrackerConfig::new(&h.binary);
    cfg.use_jailer = true;
    cfg.jailer = Some(locale2b_vmm::firecracker::JailerConfig {
        chroot_base: h.dir.path().join("jail"),
        ..locale2b_vmm::firecracker::JailerConfig::new(h.dir.path().join("no-jailer"), 1000, 1000)
    });
    let err = FirecrackerVmm::new(cfg)
        .start(&h.spec("jailed"))
        .await
        .expect_err("no jailer binary");
    assert!(
        matches!(&err, VmmError::BinaryMissing { path, .. } if path.ends_with("no-jailer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn firecracker_jailer_command_and_jail_layout() {
    let h = Harness::fake();
    let argv = h.dir.path().join("jailer-argv");
    // Records its arguments and the jail's contents, then fails like a
    // jailer without privileges would.
    let jail = h.dir.path().join("jail");
    let root = jail.join("fake_firecracker/sb-jailed/root");
    let jailer = script(
        h.dir.path(),
        "fake-jailer",
        &format!(
            "for a in \"$@\"; do echo \"$a\"; done > {argv}\nls {root} > {argv}.ls\necho 'jailer: not permitted' >&2\nexit 1",
            argv = argv.display(),
            root = root.display()
        ),
    );
    let mut cfg = FirecrackerConfig::new(&h.binary);
    cfg.use_jailer = true;
    cfg.jailer = Some(locale2b_vmm::firecracker::JailerConfig {
        chroot_base: jail.clone(),
        cgroup_version: Some(2),
        ..locale2b_vmm::firecracker::JailerConfig::new(&jailer, 1234, 5678)
    });
    let vmm = FirecrackerVmm::new(cfg);
    let err = start_retrying(&vmm, &h.spec("jailed"))
        .await
        .expect_err("fake jailer exits");
    assert!(
        matches!(&err, VmmError::ExitedEarly { reason, log_tail } if reason == "exit status 1" && log_tail.contains("not permitted")),
        "{err:?}"
    );
    let args = std::fs::read_to_string(&argv).expect("argv");
    let expected = [
        "--id".to_owned(),
        "sb-jailed".to_owned(),
        "--exec-file".to_owned(),
        h.binary.to_string_lossy().into_owned(),
        "--uid".to_owned(),
        "1234".to_owned(),
        "--gid".to_owned(),
        "5678".to_owned(),
        "--chroot-base-dir".to_owned(),
        jail.to_string_lossy().into_owned(),
        "--cgroup-version".to_owned(),
        "2".to_owned(),
        "--".to_owned(),
        "--api-sock".to_owned(),
        "/firecracker.sock".to_owned(),
    ];
    assert_eq!(args.lines().collect::<Vec<_>>(), expected);
    // The disks were hard-linked into the jail before the jailer ran, and
    // the logger/metrics files created there.
    let listing = std::fs::read_to_string(format!("{}.ls", argv.display())).expect("ls");
    let names: Vec<&str> = listing.lines().collect();
    for name in ["drive_0", "drive_1", "fc-logger.log", "fc-metrics.json"] {
        assert!(names.contains(&name), "{name} missing in jail: {names:?}");
    }
    // After the failure the drive links are gone again.
    assert!(!root.join("drive_0").exists());

    // Sandbox ids the jailer cannot take are refused before anything runs.
    let mut spec = h.spec("bad");
    spec.sandbox_id = "sb_bad".parse().expect("id");
    let err = vmm.start(&spec).await.expect_err("underscore id");
    assert!(
        matches!(err, VmmError::Spawn { what: "jailer", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn firecracker_jail_on_another_file_system_says_so() {
    let h = Harness::fake();
    let other_fs = std::path::Path::new("/dev/shm");
    let same_fs = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(a).map(|m| m.dev()).ok() == std::fs::metadata(b).map(|m| m.dev()).ok()
    };
    if !other_fs.is_dir() || same_fs(other_fs, h.dir.path()) {
        locale2b_testkit::skip("no second file system (/dev/shm) to put a jail on");
        return;
    }
    let jail = tempfile::tempdir_in(other_fs).expect("jail base");
    let jailer = script(h.dir.path(), "never-run-jailer", "exit 3");
    let mut cfg = FirecrackerConfig::new(&h.binary);
    cfg.use_jailer = true;
    cfg.jailer = Some(locale2b_vmm::firecracker::JailerConfig {
        chroot_base: jail.path().to_owned(),
        ..locale2b_vmm::firecracker::JailerConfig::new(&jailer, 1234, 1234)
    });
    let err = FirecrackerVmm::new(cfg)
        .start(&h.spec("xdev"))
        .await
        .expect_err("hard links across file systems");
    let msg = err.to_string();
    assert!(
        msg.contains("same file system") && msg.contains("LOCALE2B_JAILER_CHROOT_BASE"),
        "{msg}"
    );
}
