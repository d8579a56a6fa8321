//! End-to-end lifecycle tests of the manager with real guests under QEMU.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use common::*;
use locale2b_manager::{
    CreateSandbox, ExecSpec, GuestErrorKind, GuestOps, ManagerError, SandboxStatus, WriteFile,
};
use std::time::Duration;

fn exec(cmd: &str) -> ExecSpec {
    ExecSpec {
        timeout: Some(Duration::from_secs(30)),
        ..ExecSpec::shell(cmd)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_exec_files_destroy() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let sb = m.create(CreateSandbox::default()).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    assert_eq!(sb.memory_mb, 256);

    let out = m
        .guest(&sb.sandbox_id)
        .exec(exec("hostname; pwd; id -u"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{}\n/workspace\n0\n", sb.sandbox_id));

    m.guest(&sb.sandbox_id)
        .write_file(WriteFile {
            path: "/workspace/hello.txt".into(),
            data: b"hello".to_vec(),
            ..WriteFile::default()
        })
        .await
        .unwrap();
    let read = m
        .guest(&sb.sandbox_id)
        .read_file("/workspace/hello.txt", 0, None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(read.data, b"hello");
    let missing = m
        .guest(&sb.sandbox_id)
        .read_file("/nope", 0, None, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing,
            ManagerError::Guest {
                kind: GuestErrorKind::NotFound,
                ..
            }
        ),
        "{missing:?}"
    );

    // Generated workspace: removed with the sandbox.
    let ws_dir = base
        .path()
        .join("workspaces")
        .join(sb.workspace_id.as_str());
    assert!(ws_dir.join("disk.ext4").exists());
    m.destroy(&sb.sandbox_id).await.unwrap();
    assert!(!ws_dir.exists(), "ephemeral workspace kept");
    assert!(matches!(
        m.destroy(&sb.sandbox_id).await,
        Err(ManagerError::NotFound { .. })
    ));
    assert!(matches!(
        m.guest(&sb.sandbox_id).exec(exec("true")).await,
        Err(ManagerError::NotFound { .. })
    ));
    assert!(pids_mentioning(base.path().to_str().unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn named_workspace_keeps_its_data_across_sandboxes() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let ws: locale2b_protocol::WorkspaceId = "session-keep".parse().unwrap();
    let req = CreateSandbox {
        workspace_id: Some(ws.clone()),
        ..Default::default()
    };
    let a = m.create(req.clone()).await.unwrap();
    let out = m
        .guest(&a.sandbox_id)
        .exec(exec("echo kept > /workspace/f && sync"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    // A second create naming the running workspace returns the same sandbox.
    let again = m.create(req.clone()).await.unwrap();
    assert_eq!(again.sandbox_id, a.sandbox_id);
    m.destroy(&a.sandbox_id).await.unwrap();

    let b = m.create(req).await.unwrap();
    assert_ne!(b.sandbox_id, a.sandbox_id);
    let out = m
        .guest(&b.sandbox_id)
        .exec(exec("cat /workspace/f"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "kept\n");
    let info = m.get_workspace(&ws).await.unwrap();
    let events: Vec<_> = info.lineage.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["created", "destroyed", "created"]);
    m.destroy(&b.sandbox_id).await.unwrap();
    m.delete_workspace(&ws).await.unwrap();
    assert!(matches!(
        m.get_workspace(&ws).await,
        Err(ManagerError::NotFound { .. })
    ));
}

/// Issue acceptance: N create/destroy cycles leave no processes, file
/// descriptors, sockets, mounts or files behind. N = LOCALE2B_CYCLES
/// (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_destroy_cycles_leak_nothing() {
    let Some(image) = image_dir() else { return };
    let cycles: usize = std::env::var("LOCALE2B_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let marker = base.path().to_str().unwrap().to_owned();
    // Warm up once so lazily opened descriptors (runtime, logging) exist.
    let sb = m.create(CreateSandbox::default()).await.unwrap();
    m.destroy(&sb.sandbox_id).await.unwrap();
    let fds_before = open_fds();
    let files_before = files_under(base.path());
    let usage_before = locale2b_manager::store::disk_usage(&base.path().join("sandboxes"))
        + locale2b_manager::store::disk_usage(&base.path().join("workspaces"));
    let mounts_before = mounts_under(base.path());
    // Two at a time: the machine has two cores.
    let mut done = 0;
    while done < cycles {
        let batch = (cycles - done).min(2);
        let mut tasks = Vec::new();
        for _ in 0..batch {
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                let sb = m.create(CreateSandbox::default()).await.unwrap();
                let out = m
                    .guest(&sb.sandbox_id)
                    .exec(exec("echo $((6*7))"))
                    .await
                    .unwrap();
                assert_eq!(out.stdout, "42\n");
                m.destroy(&sb.sandbox_id).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        done += batch;
    }
    assert!(m.list().await.is_empty());
    assert_eq!(
        pids_mentioning(&marker),
        Vec::<u32>::new(),
        "VMM processes left"
    );
    assert_eq!(files_under(base.path()), files_before, "files left behind");
    let usage_after = locale2b_manager::store::disk_usage(&base.path().join("sandboxes"))
        + locale2b_manager::store::disk_usage(&base.path().join("workspaces"));
    assert_eq!(usage_after, usage_before, "disk usage grew");
    assert_eq!(mounts_under(base.path()), mounts_before);
    // Allow a little slack for descriptors held by the runtime's own pools.
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 4,
        "fds grew from {fds_before} to {fds_after}"
    );
    let cap = m.capacity().await;
    assert_eq!(cap.active_sandboxes, 0);
    assert_eq!(cap.memory_used_mb, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_creates_reach_the_right_vm() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let mut config = base.config();
    config.manager.max_sandboxes = 8;
    config.manager.boot_timeout_sec = 240;
    config.manager.eviction = locale2b_config::Eviction::None;
    let m = manager(config).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.create(CreateSandbox::default()).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().sandbox_id);
    }
    // The ninth is refused with a capacity error.
    let ninth = m.create(CreateSandbox::default()).await.unwrap_err();
    assert!(
        matches!(ninth, ManagerError::AtCapacity { .. }),
        "{ninth:?}"
    );
    for id in &ids {
        let out = m
            .guest(id)
            .exec(exec("hostname; cat /proc/cmdline"))
            .await
            .unwrap();
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(id.as_str()));
        assert!(lines
            .next()
            .unwrap()
            .contains(&format!("locale2b.sandbox_id={id}")));
    }
    for id in &ids {
        m.destroy(id).await.unwrap();
    }
    assert!(pids_mentioning(base.path().to_str().unwrap()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_reattaches_and_dead_vms_are_reported() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(m.create(CreateSandbox::default()).await.unwrap().sandbox_id);
    }
    m.guest(&ids[0])
        .exec(exec("echo before > /workspace/mark"))
        .await
        .unwrap();
    // "Crash" the server: drop the manager without destroying anything.
    drop(m);
    let m = manager(base.config()).await;
    let listed: Vec<_> = m
        .list()
        .await
        .into_iter()
        .map(|s| (s.sandbox_id, s.status))
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (id, status) in &listed {
        assert!(ids.contains(id));
        assert_eq!(*status, SandboxStatus::Running);
    }
    let out = m
        .guest(&ids[0])
        .exec(exec("cat /workspace/mark"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "before\n");

    // Kill -9 one VMM: only that sandbox becomes dead, with a reason.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            base.path()
                .join("sandboxes")
                .join(ids[1].as_str())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pid = state["process"]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = m.get(&ids[1]).await.unwrap();
        if info.status == SandboxStatus::Dead {
            let reason = info.error.unwrap_or_default();
            // An adopted (non-child) VMM's exit status cannot be known; the
            // reason says it exited and carries the console tail.
            assert!(reason.contains("exited unexpectedly"), "{reason}");
            assert!(reason.contains("console"), "{reason}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "dead VM not noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(
        m.guest(&ids[1]).exec(exec("true")).await,
        Err(ManagerError::Conflict(_))
    ));
    for id in [&ids[0], &ids[2]] {
        assert_eq!(
            m.guest(id).exec(exec("echo ok")).await.unwrap().stdout,
            "ok\n"
        );
    }
    for id in &ids {
        m.destroy(id).await.unwrap();
    }
    assert!(pids_mentioning(base.path().to_str().unwrap()).is_empty());
}
