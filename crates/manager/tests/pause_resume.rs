//! Pause/resume through snapshots with real guests under QEMU.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use common::*;
use locale2b_manager::{
    CreateSandbox, ExecSpec, GuestOps, ManagerError, SandboxManager, SandboxStatus,
};
use locale2b_protocol::{SandboxId, WorkspaceId};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn exec(cmd: &str) -> ExecSpec {
    ExecSpec {
        timeout: Some(Duration::from_secs(30)),
        ..ExecSpec::shell(cmd)
    }
}

async fn run(m: &SandboxManager, id: &SandboxId, cmd: &str) -> String {
    let out = m.guest(id).exec(exec(cmd)).await.unwrap();
    assert_eq!(out.exit_code, Some(0), "{cmd}: {out:?}");
    out.stdout
}

const COUNTER: &str = "setsid sh -c 'echo $$ > /workspace/counter.pid; i=0; \
    while true; do i=$((i+1)); echo $i > /workspace/counter.tmp; mv /workspace/counter.tmp /workspace/counter; sleep 0.1; done' \
    >/dev/null 2>&1 </dev/null &";

async fn counter(m: &SandboxManager, id: &SandboxId) -> u64 {
    run(m, id, "cat /workspace/counter 2>/dev/null || echo 0")
        .await
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the counter moves past `after` (it advances every 100 ms).
async fn counter_advances(m: &SandboxManager, id: &SandboxId, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = counter(m, id).await;
        if c > after {
            return c;
        }
        assert!(Instant::now() < deadline, "counter stuck at {c}");
    }
}

async fn named(m: &SandboxManager, ws: &str) -> locale2b_manager::SandboxInfo {
    m.create(CreateSandbox {
        workspace_id: Some(ws.parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_process_and_files_survive_five_cycles() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let sb = named(&m, "pr-cycles").await;
    let id = sb.sandbox_id.clone();
    run(&m, &id, COUNTER).await;
    let first = counter_advances(&m, &id, 0).await;
    let pid = run(&m, &id, "cat /workspace/counter.pid").await;
    let mut last = first;
    for cycle in 0..5 {
        run(
            &m,
            &id,
            &format!("echo cycle-{cycle} > /workspace/file-{cycle}"),
        )
        .await;
        let before = counter(&m, &id).await;
        let paused = m.pause(&id).await.unwrap();
        assert_eq!(paused.status, SandboxStatus::Paused);
        // Pausing again is a no-op with the current state.
        assert_eq!(m.pause(&id).await.unwrap().status, SandboxStatus::Paused);
        assert!(matches!(
            m.guest(&id).exec(exec("true")).await,
            Err(ManagerError::Conflict(_))
        ));
        assert_eq!(
            m.capacity().await.active_sandboxes,
            0,
            "paused sandbox must hold no VM"
        );
        assert!(
            pids_mentioning(base.path().to_str().unwrap()).is_empty(),
            "VMM still running while paused"
        );
        let resumed = m.resume(&id).await.unwrap();
        assert_eq!(resumed.status, SandboxStatus::Running);
        assert_eq!(resumed.sandbox_id, id);
        assert_eq!(m.resume(&id).await.unwrap().status, SandboxStatus::Running);
        let after = counter(&m, &id).await;
        assert!(
            after >= before,
            "counter went back from {before} to {after}"
        );
        last = counter_advances(&m, &id, after).await;
        assert_eq!(
            run(&m, &id, "cat /workspace/counter.pid").await,
            pid,
            "background process replaced"
        );
    }
    assert!(last > first);
    for cycle in 0..5 {
        assert_eq!(
            run(&m, &id, &format!("cat /workspace/file-{cycle}")).await,
            format!("cycle-{cycle}\n")
        );
    }
    // The guest clock was set on resume: it is within a few seconds of ours.
    let guest: i64 = run(&m, &id, "date +%s").await.trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() < 5,
        "guest clock {guest} vs host {host}"
    );
    let ws = m
        .get_workspace(&"pr-cycles".parse::<WorkspaceId>().unwrap())
        .await
        .unwrap();
    assert_eq!(ws.lineage.iter().filter(|e| e.event == "paused").count(), 5);
    assert_eq!(
        ws.lineage.iter().filter(|e| e.event == "resumed").count(),
        5
    );
    m.destroy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_sandbox_survives_a_service_restart() {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m = manager(base.config()).await;
    let sb = named(&m, "pr-restart").await;
    let id = sb.sandbox_id.clone();
    run(&m, &id, "echo persisted > /workspace/p").await;
    m.pause(&id).await.unwrap();
    drop(m);
    // Leftovers of a crash: an incomplete snapshot and a superseded one.
    let snaps = base.path().join("workspaces/pr-restart/snapshots");
    std::fs::create_dir_all(snaps.join(".snap-crashed.tmp")).unwrap();
    std::fs::create_dir_all(snaps.join("snap-superseded")).unwrap();
    let m = manager(base.config()).await;
    assert_eq!(m.get(&id).await.unwrap().status, SandboxStatus::Paused);
    let left: Vec<_> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left.len(),
        1,
        "orphaned snapshot directories not removed: {left:?}"
    );
    // Creating with the workspace id resumes the paused sandbox.
    let again = named(&m, "pr-restart").await;
    assert_eq!(again.sandbox_id, id);
    assert_eq!(again.status, SandboxStatus::Running);
    assert_eq!(run(&m, &id, "cat /workspace/p").await, "persisted\n");
    m.destroy(&id).await.unwrap();
}

fn snapshot_file(base: &std::path::Path, ws: &str, name: &str) -> std::path::PathBuf {
    let snaps = base.join("workspaces").join(ws).join("snapshots");
    let dir = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .next()
        .expect("a snapshot")
        .path();
    dir.join(name)
}

async fn corrupt_then_recover(damage: impl FnOnce(&std::path::Path), file: &str, expect: &str) {
    let Some(image) = image_dir() else { return };
    let base = TestBase::new(&image);
    let m: Arc<SandboxManager> = manager(base.config()).await;
    let ws = format!("pr-corrupt-{file}");
    let sb = named(&m, &ws).await;
    let id = sb.sandbox_id.clone();
    run(&m, &id, "echo precious > /workspace/data").await;
    m.pause(&id).await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(snapshot_file(base.path(), &ws, "snapshot.json")).unwrap(),
    )
    .unwrap();
    let name = manifest[file]["name"].as_str().unwrap().to_owned();
    damage(&snapshot_file(base.path(), &ws, &name));
    let err = m.resume(&id).await.unwrap_err();
    assert!(matches!(err, ManagerError::SnapshotInvalid(_)), "{err:?}");
    assert!(err.to_string().contains(expect), "{err}");
    assert_eq!(
        m.get(&id).await.unwrap().status,
        SandboxStatus::Paused,
        "must stay paused"
    );
    // The data is recoverable: destroy the sandbox, boot the workspace fresh.
    m.destroy(&id).await.unwrap();
    let fresh = named(&m, &ws).await;
    assert_eq!(
        run(&m, &fresh.sandbox_id, "cat /workspace/data").await,
        "precious\n"
    );
    let lineage = m.get_workspace(&ws.parse().unwrap()).await.unwrap().lineage;
    assert!(lineage.iter().any(|e| e.event == "restore_failed"));
    m.destroy(&fresh.sandbox_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_memory_file_is_detected() {
    corrupt_then_recover(
        |p| {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, 4096).unwrap();
            b[0] ^= 0xff;
            f.write_all_at(&b, 4096).unwrap();
        },
        "memory",
        "corrupted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncated_state_file_is_detected() {
    corrupt_then_recover(
        |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        },
        "state",
        "truncated",
    )
    .await;
}
