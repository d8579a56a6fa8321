//! The periodic reaper of the real `locale2b serve` process: a VMM that no
//! record names, started after the server's own start-up scan (as one left
//! behind by an earlier server would be), is killed by the next pass, its
//! run directory removed, and both are logged; the server's own sandbox is
//! left alone.

#![allow(clippy::unwrap_used)]

mod common;

use common::{base_dir, call, image_dir, start, KillOnDrop};
use reqwest::Method as M;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_vmm_is_reaped_by_the_periodic_pass() {
    let Some(image) = image_dir() else { return };
    let base = base_dir(&image);
    let _kill = KillOnDrop(base.path().to_path_buf());
    let (mut server, url) = start(base.path(), &[("LOCALE2B_REAPER_INTERVAL_SEC", "1")]);
    let http = reqwest::Client::new();
    let (st, created) = call(
        &http,
        M::POST,
        format!("{url}/sandboxes"),
        Some(json!({"memory_mb": 256})),
    )
    .await;
    assert_eq!(st, 200, "{created}");
    let id = created["sandbox_id"].as_str().unwrap().to_owned();

    // A real QEMU process whose files live under this base dir's
    // sandboxes/ but that no record names.
    let ghost = "sb-ghost0000000";
    let ghost_dir = base.path().join("sandboxes").join(ghost);
    std::fs::create_dir_all(&ghost_dir).unwrap();
    let mut orphan = Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-nodefaults", "-nographic", "-S", "-pidfile"])
        .arg(ghost_dir.join("qemu.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = orphan.id();

    // The next pass kills it (we reap its exit status) and logs it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = orphan.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned VMM {pid} is still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "the orphan exited by itself: {status}");
    let log_has = |needle: &str| {
        std::fs::read_to_string(base.path().join("server.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(needle) && l.contains(ghost))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(log_has("reaper: killed orphaned VMM process")
        && log_has("reaper: removed the run directory"))
    {
        assert!(Instant::now() < deadline, "no reaper log lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = std::fs::read_to_string(base.path().join("server.log"))
        .unwrap()
        .lines()
        .find(|l| l.contains("reaper: killed orphaned VMM process"))
        .unwrap()
        .to_owned();
    println!("{line}");
    assert!(line.contains(&format!("pid={pid}")), "{line}");
    assert!(
        !ghost_dir.exists(),
        "the orphan's run directory is still there"
    );

    // The server's own sandbox was not touched.
    let (st, out) = call(
        &http,
        M::POST,
        format!("{url}/sandboxes/{id}/exec"),
        Some(json!({"command": "echo alive"})),
    )
    .await;
    assert_eq!(
        (st, out["stdout"].as_str()),
        (200, Some("alive\n")),
        "{out}"
    );
    let (st, _) = call(&http, M::DELETE, format!("{url}/sandboxes/{id}"), None).await;
    assert_eq!(st, 200);
    let _ = server.kill();
    let _ = server.wait();
}
