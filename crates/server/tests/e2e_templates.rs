//! End-to-end: creates from a template snapshot (`boot: template`) against
//! real guests. A clone answers, has its own identity, clock and
//! randomness, its own disk; a stale template is not used and a damaged one
//! gives a cold boot with a logged reason; many clones share the template's
//! memory.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use locale2b_config::Boot;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Log lines of this test process (the manager logs through `tracing`).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The process's log (installed by the first caller).
    fn capture() -> Self {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Self::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_env_filter("locale2b_manager=info")
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            logs
        })
        .clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn create(s: &Server, body: Value) -> Value {
    let (st, info) = s.call(M::POST, "/sandboxes", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{info}");
    info
}

async fn exec(s: &Server, id: &str, command: &str) -> String {
    s.exec_ok(id, command).await
}

fn id_of(info: &Value) -> String {
    info["sandbox_id"].as_str().unwrap().to_owned()
}

fn templates(base: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(base.join("templates"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_a_template_answer_with_their_own_identity_clock_randomness_and_disk() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 4, |c| c.manager.boot = Boot::Template).await;
    let base = s._base.path().to_path_buf();

    let a = create(&s, json!({"memory_mb": 256})).await;
    let b = create(&s, json!({"memory_mb": 256})).await;
    let cold = create(&s, json!({"memory_mb": 256, "boot": "cold"})).await;
    assert_eq!(a["boot"], "template", "{a}");
    assert_eq!(b["boot"], "template", "{b}");
    assert_eq!(cold["boot"], "cold", "{cold}");
    println!(
        "TIMING create ms: first (builds the template) {}, second {}, cold {}",
        a["boot_ms"], b["boot_ms"], cold["boot_ms"]
    );
    let built = templates(&base);
    assert_eq!(built.len(), 1, "one template built: {built:?}");
    assert!(built[0].join("template.json").is_file());

    let probe = "cat /proc/sys/kernel/hostname /etc/machine-id; \
                 date +%s%3N; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let mut seen = Vec::new();
    for info in [&a, &b] {
        let id = id_of(info);
        let before = now_ms();
        let out = exec(&s, &id, probe).await;
        let after = now_ms();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], id, "hostname is the sandbox id");
        assert_eq!(lines[1].len(), 32, "machine-id: {}", lines[1]);
        let guest_ms: i64 = lines[2].parse().unwrap();
        assert!(
            guest_ms >= before - 1000 && guest_ms <= after + 1000,
            "guest clock {guest_ms} not within 1 s of the host's [{before}, {after}]"
        );
        assert_eq!(lines[3].len(), 64, "{out}");
        seen.push((lines[1].to_owned(), lines[3].to_owned()));
    }
    assert_ne!(seen[0].0, seen[1].0, "each clone has its own machine-id");
    assert_ne!(seen[0].1, seen[1].1, "clones draw different random bytes");

    // Each clone's workspace disk is its own copy.
    let (ida, idb) = (id_of(&a), id_of(&b));
    exec(&s, &ida, "echo from-a > /workspace/mine && sync").await;
    let out = exec(
        &s,
        &idb,
        "ls /workspace; cat /workspace/mine 2>/dev/null || true",
    )
    .await;
    assert!(!out.contains("from-a"), "b sees a's file: {out}");

    // A clone pauses and resumes like any sandbox (its snapshot carries
    // its RAM), and keeps what it had.
    exec(&s, &ida, "echo in-ram > /tmp/ram").await;
    let t = std::time::Instant::now();
    let (st, p) = s
        .call(M::POST, &format!("/sandboxes/{ida}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    let paused = t.elapsed();
    let t = std::time::Instant::now();
    let (st, r) = s
        .call(M::POST, &format!("/sandboxes/{ida}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    println!("TIMING clone pause {paused:?}, resume {:?}", t.elapsed());
    assert_eq!(r["boot"], "template");
    let out = exec(&s, &ida, "cat /tmp/ram /workspace/mine").await;
    assert_eq!(out, "in-ram\nfrom-a\n");

    // A create that attaches an existing workspace boots it cold: its disk
    // is its own.
    let ws = create(&s, json!({"memory_mb": 256, "workspace_id": "tpl-ws"})).await;
    assert_eq!(ws["boot"], "template");
    let wid = id_of(&ws);
    exec(&s, &wid, "echo kept > /workspace/kept && sync").await;
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{wid}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let again = create(&s, json!({"memory_mb": 256, "workspace_id": "tpl-ws"})).await;
    assert_eq!(again["boot"], "cold", "{again}");
    assert_eq!(
        exec(&s, &id_of(&again), "cat /workspace/kept").await,
        "kept\n"
    );

    for info in [&a, &b, &cold, &again] {
        let (st, _) = s
            .call(M::DELETE, &format!("/sandboxes/{}", id_of(info)), None)
            .await;
        assert_eq!(st, StatusCode::OK);
    }
}

/// Makes `base/images/default` a directory of its own (links to the real
/// image's files and a copy of its manifest), so the test can change the
/// manifest as a rebuild would.
fn own_image_dir(base: &Path, image: &Path) -> PathBuf {
    let dir = base.join("images/default");
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    for f in ["vmlinux", "initrd", "rootfs.ext4"] {
        if image.join(f).exists() {
            std::os::unix::fs::symlink(image.join(f), dir.join(f)).unwrap();
        }
    }
    std::fs::copy(image.join("manifest.json"), dir.join("manifest.json")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_template_is_not_used_and_a_damaged_one_gives_a_cold_boot_and_a_log_line() {
    let Some(image) = image_dir() else { return };
    let logs = Logs::capture();
    let s = Server::start_with(&image, 4, |c| c.manager.boot = Boot::Template).await;
    let base = s._base.path().to_path_buf();
    let img = own_image_dir(&base, &image);

    let first = create(&s, json!({"memory_mb": 256})).await;
    assert_eq!(first["boot"], "template");
    let old = templates(&base);
    assert_eq!(old.len(), 1, "{old:?}");

    // "Rebuild" the image: another rootfs checksum in the manifest. The old
    // template is not used; a new one is built and the old one removed.
    let mpath = img.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    manifest["rootfs"]["sha256"] = json!("0".repeat(64));
    std::fs::write(&mpath, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let second = create(&s, json!({"memory_mb": 256})).await;
    assert_eq!(second["boot"], "template");
    let new = templates(&base);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old, "the stale template was replaced");
    let t: Value =
        serde_json::from_slice(&std::fs::read(new[0].join("template.json")).unwrap()).unwrap();
    assert!(
        t["key_input"].as_str().unwrap().contains(&"0".repeat(64)),
        "{t}"
    );

    // Damage the template's memory file in place: the next create boots
    // cold, says why in the log, and does not fail.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mem = new[0].join(t["memory"]["name"].as_str().unwrap());
        let mut f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
        f.seek(SeekFrom::Start(4096 * 7)).unwrap();
        f.write_all(&[0x5a; 64]).unwrap();
    }
    let third = create(&s, json!({"memory_mb": 256})).await;
    assert_eq!(third["boot"], "cold", "{third}");
    let text = logs.text();
    assert!(
        text.contains("template snapshot unusable") && text.contains("checksum mismatch"),
        "no log line saying why: {text}"
    );
    let out = exec(&s, &id_of(&third), "echo ok").await;
    assert_eq!(out, "ok\n");

    // The damaged template was removed; the next create builds it again.
    let fourth = create(&s, json!({"memory_mb": 256})).await;
    assert_eq!(fourth["boot"], "template", "{fourth}");
    assert_eq!(exec(&s, &id_of(&fourth), "echo ok").await, "ok\n");
}

fn vmm_pid(base: &Path, id: &str) -> u32 {
    let state: Value = serde_json::from_slice(
        &std::fs::read(base.join("sandboxes").join(id).join("state.json")).unwrap(),
    )
    .unwrap();
    u32::try_from(state["process"]["pid"].as_u64().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_clones_of_256_mib_run_at_once_and_share_the_template_memory() {
    const N: usize = 40;
    let Some(image) = image_dir() else { return };
    let logs = Logs::capture();
    let s = Server::start_with(&image, 41, |c| {
        c.manager.boot = Boot::Template;
        c.manager.memory_budget_mb = 41 * 256;
        // Forty idle TCG guests share two cores: give slow answers time.
        c.manager.health_check_interval_sec = 30;
    })
    .await;
    let base = s._base.path().to_path_buf();

    // Four creates at once on a server with no template: one build.
    let first: Vec<Value> =
        futures::future::join_all((0..4).map(|_| create(&s, json!({"memory_mb": 256})))).await;
    let built = logs.text().matches("template snapshot built").count();
    assert_eq!(
        built, 1,
        "concurrent first creates built the template {built} times"
    );
    let mut ids: Vec<String> = first.iter().map(id_of).collect();
    let mut ms = Vec::new();
    for _ in 4..N {
        let info = create(&s, json!({"memory_mb": 256})).await;
        assert_eq!(info["boot"], "template", "{info}");
        ms.push(info["boot_ms"].as_u64().unwrap());
        ids.push(id_of(&info));
    }
    ms.sort_unstable();
    println!(
        "TIMING {} clones: create p50 {} ms, p95 {} ms, max {} ms",
        ms.len(),
        ms[ms.len() / 2],
        ms[ms.len() * 95 / 100],
        ms[ms.len() - 1]
    );

    // All forty answer, each as itself.
    for id in &ids {
        let out = exec(&s, id, "cat /proc/sys/kernel/hostname").await;
        assert_eq!(out.trim(), id);
    }

    let templates = templates(&base);
    assert_eq!(templates.len(), 1, "{templates:?}");
    let memory = templates[0].join("memory");
    let (mut total, mut guest) = (0u64, 0u64);
    for id in &ids {
        let (t, g) = locale2b_vmm::process::pss_kib(vmm_pid(&base, id), &memory).unwrap();
        total += t;
        guest += g;
    }
    let nominal = (N as u64) * 256 * 1024;
    println!(
        "MEMORY {N} clones of 256 MiB: PSS {} MiB in all ({} MiB per clone), of it the template's memory {} MiB ({} MiB per clone); nominal {} MiB",
        total / 1024,
        total / 1024 / N as u64,
        guest / 1024,
        guest / 1024 / N as u64,
        nominal / 1024
    );
    assert!(guest > 0, "no clone maps the template's memory file");
    assert!(
        total < nominal / 2,
        "{N} clones use {} MiB, not far below the nominal {} MiB",
        total / 1024,
        nominal / 1024
    );
    for id in &ids {
        let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
        assert_eq!(st, StatusCode::OK);
    }
}

/// Waits (up to 30 s) until the health check has sampled sandbox `id`'s VMM.
async fn sampled(s: &Server, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (st, m) = s
            .call(M::GET, &format!("/sandboxes/{id}/metrics"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{m}");
        if m["vmm_pss_mb"].as_u64().unwrap() > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not sampled: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_measured_memory_and_overcommit_admits_by_it() {
    let Some(image) = image_dir() else { return };
    // A budget of four 256 MiB guests, nominally.
    let configure = |overcommit: bool| {
        move |c: &mut locale2b_config::Config| {
            c.manager.boot = Boot::Template;
            c.manager.memory_budget_mb = 1024;
            c.manager.memory_overcommit = overcommit;
            c.manager.eviction = locale2b_config::Eviction::None;
            c.manager.health_check_interval_sec = 1;
        }
    };

    // Without overcommit the nominal sum caps admission.
    let s = Server::start_with(&image, 10, configure(false)).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(id_of(&create(&s, json!({"memory_mb": 256})).await));
    }
    let (st, e) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("of guest RAM"),
        "{e}"
    );
    // /health reports what the clones really cost, once sampled.
    for id in &ids {
        sampled(&s, id).await;
    }
    let (_, health) = s.call(M::GET, "/health", None).await;
    println!("HEALTH {health}");
    assert_eq!(health["memory_used_mb"], 1024);
    assert_eq!(health["memory_overcommit"], false);
    assert_eq!(health["memory_available_mb"], 0);
    assert!(
        health["vmm_pss_mb"].as_u64().unwrap() < health["vmm_rss_mb"].as_u64().unwrap(),
        "shared template pages are counted once in PSS: {health}"
    );
    drop(s);

    // With overcommit, admission counts the measured memory: more clones
    // than the nominal budget holds are admitted.
    let s = Server::start_with(&image, 10, configure(true)).await;
    for _ in 0..6 {
        let id = id_of(&create(&s, json!({"memory_mb": 256})).await);
        // Sampled: the next admission sees its measured cost.
        sampled(&s, &id).await;
    }
    let (_, h) = s.call(M::GET, "/health", None).await;
    println!("HEALTH overcommit {h}");
    assert_eq!(h["memory_overcommit"], true);
    assert_eq!(h["memory_used_mb"], 6 * 256, "{h}");
    assert!(h["memory_measured_mb"].as_u64().unwrap() < 1024, "{h}");
}
