//! Resource governance through the real API with real guests: the idle
//! pause (with a stream holding it off) and auto-resume, LRU eviction at
//! capacity (never of a sandbox with a call in flight) and 503 without it,
//! per-sandbox disk sizes (ENOSPC inside, the host's disk untouched beyond
//! the limit, 507 when the host cannot back a disk), and host limits: a
//! guest fork bomb and memory hog stay in their VMM's cgroup while another
//! sandbox keeps answering.

#![allow(clippy::unwrap_used)]

mod common;

use common::{image_dir, Server};
use locale2b_config::Eviction;
use reqwest::{Method as M, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn create(s: &Server, body: Value) -> String {
    let (st, info) = s.call(M::POST, "/sandboxes", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{info}");
    info["sandbox_id"].as_str().unwrap().to_owned()
}

async fn exec(s: &Server, id: &str, command: &str) -> Value {
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({ "command": command })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{command}: {out}");
    out
}

async fn info(s: &Server, id: &str) -> Value {
    let (st, body) = s.call(M::GET, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body
}

/// Polls the sandbox's info until `done` holds or `within` passes.
async fn wait_info(s: &Server, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let body = info(s, id).await;
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_is_paused_with_nothing_lost_and_auto_resumes() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(
        &s,
        json!({"memory_mb": 256, "idle_timeout_sec": 3, "auto_resume": true}),
    )
    .await;
    let created = info(&s, &id).await;
    assert_eq!(created["idle_timeout_sec"], 3);
    assert_eq!(created["auto_resume"], true);
    exec(&s, &id, "echo kept > /workspace/note").await;
    // A counter that runs on in the background.
    let (st, p) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({"command": "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let pid = p["pid"].as_u64().unwrap();

    // An attached stream holds the idle pause off: follow the process for
    // twice the idle timeout, watching the status all along.
    let resp = s
        .req(M::GET, &format!("/sandboxes/{id}/processes/{pid}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let held_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < held_until {
        let body = info(&s, &id).await;
        assert_eq!(
            body["status"], "running",
            "paused with a stream attached: {body}"
        );
        let (_, m) = s
            .call(M::GET, &format!("/sandboxes/{id}/metrics"), None)
            .await;
        assert_eq!(m["streams_attached"], 1, "{m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(resp);

    // Detached and idle: paused by the idle timeout.
    let before = exec(&s, &id, "cat /tmp/count").await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    let paused = wait_info(&s, &id, Duration::from_secs(60), |b| {
        b["status"] == "paused"
    })
    .await;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert_eq!(paused["paused_by"], "idle", "{paused}");
    assert!(paused["paused_at"].is_string(), "{paused}");

    // The next call resumes it transparently; files and the process are intact.
    let out = exec(&s, &id, "cat /workspace/note; cat /tmp/count").await;
    let stdout = out["stdout"].as_str().unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("kept"), "{out}");
    let after: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(after >= before, "counter went back: {before} -> {after}");
    let running = info(&s, &id).await;
    assert_eq!(running["status"], "running", "{running}");
    assert!(running["paused_by"].is_null(), "{running}");
    let (st, p) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes/{pid}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["status"], "running", "{p}");
    // The counter keeps counting after the resume.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again: u64 = exec(&s, &id, "cat /tmp/count").await["stdout"]
            .as_str()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if again > after {
            break;
        }
        assert!(Instant::now() < deadline, "counter stopped at {after}");
    }

    // Without auto_resume a paused sandbox refuses calls with 409.
    let other = create(&s, json!({"memory_mb": 256, "idle_timeout_sec": 0})).await;
    assert!(info(&s, &other).await["idle_timeout_sec"].is_null());
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{other}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s
        .call(
            M::POST,
            &format!("/sandboxes/{other}/exec"),
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resume it first"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_the_least_recently_used_idle_sandbox_is_paused() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 3).await;
    let a = create(&s, json!({"memory_mb": 256})).await;
    let b = create(&s, json!({"memory_mb": 256})).await;
    let c = create(&s, json!({"memory_mb": 256})).await;
    exec(&s, &b, "echo b > /workspace/b").await;

    // `a` is the least recently used but has a call in flight: it must not
    // be picked.
    let a_call = {
        let req = s
            .req(M::POST, &format!("/sandboxes/{a}/exec"))
            .json(&json!({"command": "sleep 4; echo done"}));
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, m) = s
            .call(M::GET, &format!("/sandboxes/{a}/metrics"), None)
            .await;
        if m["calls_in_flight"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "a's exec never started: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exec(&s, &b, "true").await;
    exec(&s, &c, "true").await;
    // Order of last use: a (busy), b, c. A fourth create pauses b.
    let d = create(&s, json!({"memory_mb": 256})).await;
    let bi = info(&s, &b).await;
    assert_eq!(bi["status"], "paused", "{bi}");
    assert_eq!(bi["paused_by"], "eviction", "{bi}");
    for id in [&a, &c, &d] {
        assert_eq!(info(&s, id).await["status"], "running", "{id}");
    }
    let out = a_call.await.unwrap();
    assert_eq!(out["stdout"], "done\n", "{out}");
    // Nothing of b was lost.
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{b}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    // The resume itself evicted the least recently used of the others.
    let paused: Vec<String> = {
        let (_, list) = s.call(M::GET, "/sandboxes", None).await;
        list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"] == "paused")
            .map(|x| x["sandbox_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(paused, vec![a.clone()], "a was used least recently");
    assert_eq!(exec(&s, &b, "cat /workspace/b").await["stdout"], "b\n");

    // With eviction off, capacity is a 503 with Retry-After.
    drop(s);
    let s = Server::start_with(&image, 1, |c| c.manager.eviction = Eviction::None).await;
    create(&s, json!({"memory_mb": 256})).await;
    let r = s
        .req(M::POST, "/sandboxes")
        .json(&json!({"memory_mb": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "at_capacity", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_enospc_inside_and_bounded_on_the_host() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 2, |c| c.manager.max_disk_size_mb = 1 << 40).await;

    // Bad sizes are 400; a disk the host cannot back is 507.
    let (st, body) = s
        .call(M::POST, "/sandboxes", Some(json!({"disk_size_mb": 10})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("disk_size_mb"));
    let (st, body) = s
        .call(
            M::POST,
            "/sandboxes",
            Some(json!({"disk_size_mb": 1u64 << 39})),
        )
        .await;
    assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");

    let limit_mb = 128;
    let id = create(&s, json!({"memory_mb": 256, "disk_size_mb": limit_mb})).await;
    assert_eq!(info(&s, &id).await["disk_size_mb"], limit_mb);
    let out = exec(
        &s,
        &id,
        "dd if=/dev/zero of=/workspace/big bs=1M 2>&1; echo rc=$?; sync",
    )
    .await;
    let text = out["stdout"].as_str().unwrap();
    assert!(text.contains("No space left on device"), "{out}");
    assert!(!text.contains("rc=0"), "{out}");
    // What the full disk takes on the host (its sparse file; other tests
    // share the host's disk, so its free space is not a clean measure).
    let (_, m) = s
        .call(M::GET, &format!("/sandboxes/{id}/metrics"), None)
        .await;
    let allocated = m["disk_allocated_mb"].as_u64().unwrap();
    assert!(
        allocated <= limit_mb,
        "the workspace takes {allocated} MiB of host disk for a {limit_mb} MiB disk: {m}"
    );
    assert_eq!(m["disk_total_mb"], limit_mb, "{m}");
    assert!(m["disk_used_mb"].as_u64().unwrap() >= limit_mb / 2, "{m}");
    // The guest still works and can free its disk.
    exec(&s, &id, "rm /workspace/big && echo ok > /workspace/after").await;
}

/// Median wall time of `n` execs of `true` in `id`.
async fn exec_median(s: &Server, id: &str, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        exec(s, id, "true").await;
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_memory_hog_stay_inside_their_cgroup() {
    let Some(image) = image_dir() else { return };
    // One core per vCPU and no more: on a 2-core host the neighbour keeps
    // the other one.
    let s = Server::start_with(&image, 2, |c| c.manager.cgroup_cpu_extra_pct = 0).await;
    let (_, health) = s.call(M::GET, "/health", None).await;
    if health["cgroups"] == "none" {
        locale2b_testkit::require_or_skip("cgroups are not available on this host");
        return;
    }
    let hog = create(&s, json!({"memory_mb": 256})).await;
    let calm = create(&s, json!({"memory_mb": 256})).await;
    let baseline = exec_median(&s, &calm, 9).await;

    // The hog's VMM runs in its own cgroup.
    let pids = locale2b_testkit::pids_mentioning(&hog);
    let qemu = pids
        .iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("qemu-system"))
        })
        .copied()
        .expect("the hog's VMM");
    let cg = std::fs::read_to_string(format!("/proc/{qemu}/cgroup")).unwrap();
    let parent = locale2b_manager::cgroup::parent_name(s._base.path());
    assert!(cg.contains(&format!("{parent}/{hog}")), "{cg}");

    // Inside the guest: a memory hog and a fork bomb, left running.
    let (st, body) = s
        .call(
            M::POST,
            &format!("/sandboxes/{hog}/processes"),
            Some(json!({"command": "python3 -c 'b=[]\nwhile True: b.append(bytearray(8<<20))' & f(){ f|f& }; f"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    // Give the hog a moment of real work: until its VMM has burnt a second
    // of CPU.
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let start = ticks(qemu);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ticks(qemu) < start + 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ticks(qemu) >= start + 100, "the hog never ran");

    // The other sandbox answers within its normal latency.
    let loaded = exec_median(&s, &calm, 9).await;
    assert!(
        loaded <= baseline * 4 + Duration::from_millis(200),
        "exec median {loaded:?} under a neighbour's fork bomb vs {baseline:?} before"
    );
    // The hog's VMM stays within its cgroup's memory limit.
    let (_, m) = s
        .call(M::GET, &format!("/sandboxes/{hog}/metrics"), None)
        .await;
    let charged = m["cgroup_memory_mb"].as_u64().expect("cgroup figure");
    assert!(charged <= 256 + 384, "{m}");
    assert!(m["vmm_rss_mb"].as_u64().unwrap() <= 256 + 384, "{m}");
    // And the host kernel never saw the guest's processes.
    let host_tasks = std::fs::read_dir(format!("/proc/{qemu}/task"))
        .unwrap()
        .count();
    assert!(host_tasks < 64, "{host_tasks} host tasks in the hog's VMM");
    // Destroying it works despite the bomb.
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{hog}"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        locale2b_testkit::pids_mentioning(&hog).is_empty(),
        "the hog's VMM survived its destroy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_ends_paused_retention_and_removes_unnamed_snapshots() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 2, |c| {
        c.manager.paused_retention_sec = 2;
        c.manager.reaper_interval_sec = 1;
    })
    .await;
    let id = create(&s, json!({"memory_mb": 256, "workspace_id": "kept-disk"})).await;
    exec(&s, &id, "echo on-disk > /workspace/note").await;
    // A snapshot directory no workspace names (as a crash mid-pause leaves).
    let snaps = s._base.path().join("workspaces/kept-disk/snapshots");
    let junk = snaps.join("snap-junk000000");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("memory"), b"stale").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while junk.exists() {
        assert!(
            Instant::now() < deadline,
            "the unnamed snapshot was not reaped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (st, paused) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{paused}");
    // The sandbox's own snapshot is named by its workspace: kept while paused.
    let named = info(&s, &id).await;
    assert_eq!(named["status"], "paused", "{named}");
    // Its retention of 2 s ends in a destroy by the reaper.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = s.call(M::GET, &format!("/sandboxes/{id}"), None).await;
        if st == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(body["status"], "paused", "{body}");
        assert!(
            Instant::now() < deadline,
            "still there after its retention: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The named workspace's disk is kept: a new sandbox on it sees the file.
    let again = create(&s, json!({"memory_mb": 256, "workspace_id": "kept-disk"})).await;
    assert_eq!(
        exec(&s, &again, "cat /workspace/note").await["stdout"],
        "on-disk\n"
    );
    let text = s
        .req(M::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("locale2b_retention_destroys_total 1\n"),
        "{text}"
    );
}

/// A guest that floods its serial console cannot fill the host's disk:
/// the console log is cut at `console_log_max_kb`, its newer half kept in
/// `console.log.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_is_cut_at_the_configured_size() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 2, |c| {
        c.manager.console_log_max_kb = 16;
        c.manager.health_check_interval_sec = 1;
    })
    .await;
    let id = create(&s, json!({})).await;
    // 400 KB of 'x' through the guest's serial port (25 times the limit).
    let out = exec(
        &s,
        &id,
        "head -c 400000 /dev/zero | tr '\\0' x > /dev/ttyS0 && echo flooded",
    )
    .await;
    assert_eq!(out["exit_code"], 0, "{out}");
    let dir = s._base.path().join("sandboxes").join(&id);
    let log = dir.join("console.log");
    let older = dir.join("console.log.1");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let kept = std::fs::read(&older).unwrap_or_default();
        // Cut at least once, the kept half is the flood, and the live log
        // is back under the limit.
        if kept.len() == 8 * 1024
            && kept.iter().filter(|b| **b == b'x').count() > 4096
            && len <= 16 * 1024
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "console.log is {len} bytes, console.log.1 {} bytes",
            kept.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The host never held more than a bounded amount of it.
    let total = std::fs::metadata(&log).unwrap().len() + std::fs::metadata(&older).unwrap().len();
    assert!(total < 400_000, "{total} bytes of console on the host");
    // The guest is fine.
    let out = exec(&s, &id, "echo alive").await;
    assert_eq!(out["stdout"], "alive\n", "{out}");
}
