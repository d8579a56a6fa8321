//! Crash consistency: the real server is killed with SIGKILL at every
//! point of create, pause, resume and destroy (`LOCALE2B_CRASH_AT`, the
//! testing-only knob that makes it kill itself there), restarted, and
//! checked: the sandbox is running (with its background process alive),
//! paused with a snapshot that resumes, or cleanly gone with its workspace
//! kept; never dead, and every line written to the workspace is still
//! there. `LOCALE2B_CRASH_ROUNDS` (default 1) repeats the whole sequence;
//! `scripts/crash-soak.sh` runs 20 rounds.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method as M;
use serde_json::{json, Value};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Child;
use std::time::{Duration, Instant};

const WORKSPACE: &str = "crash-ws";

/// What a restart must leave after a crash at `point`.
fn expected(point: &str) -> Option<&'static str> {
    match point {
        // The create never answered: gone, its workspace kept.
        p if p.starts_with("create:") => None,
        // The VMM still ran: the pause is rolled back.
        "pause:pausing" | "pause:vm_paused" | "pause:snapshot_written" => Some("running"),
        // The VMM was stopped after a complete snapshot: completed.
        "pause:vm_stopped" | "pause:workspace_updated" => Some("paused"),
        // Nothing was restored yet: still paused.
        "resume:resuming" => Some("paused"),
        "resume:restored" | "resume:agent_ready" => Some("running"),
        p if p.starts_with("destroy:") => None,
        p => panic!("no expectation for crash point {p}"),
    }
}

struct World {
    base: tempfile::TempDir,
    http: reqwest::Client,
    server: Option<Child>,
    url: String,
    /// Lines written to /workspace/log, in order.
    lines: Vec<String>,
    /// The background process that must survive (sandbox, pid).
    process: Option<(String, u64)>,
}

impl World {
    fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill_server();
        let (child, url) = start(self.base.path(), env);
        self.server = Some(child);
        self.url = url;
    }

    async fn call(&self, m: M, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.http, m, format!("{}{path}", self.url), body).await
    }

    /// The sandbox of the workspace and its status; no sandbox is dead.
    async fn sandbox(&self) -> Option<(String, String)> {
        let (st, list) = self.call(M::GET, "/sandboxes", None).await;
        assert_eq!(st, 200, "{list}");
        let all = list["sandboxes"].as_array().unwrap();
        for sb in all {
            assert_ne!(sb["status"], "dead", "a sandbox is dead: {sb}");
        }
        assert!(all.len() <= 1, "{list}");
        all.first().map(|sb| {
            assert_eq!(sb["workspace_id"], WORKSPACE);
            (
                sb["sandbox_id"].as_str().unwrap().to_owned(),
                sb["status"].as_str().unwrap().to_owned(),
            )
        })
    }

    async fn exec(&self, id: &str, command: &str) -> String {
        let (st, out) = self
            .call(
                M::POST,
                &format!("/sandboxes/{id}/exec"),
                Some(json!({"command": command})),
            )
            .await;
        assert_eq!(st, 200, "{out}");
        assert_eq!(out["exit_code"], 0, "{out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    /// Brings the workspace's sandbox to running (creating or resuming
    /// it), checks that nothing written was lost and that the background
    /// process lives, then writes one more line.
    async fn running(&mut self) -> String {
        let id = match self.sandbox().await {
            Some((id, s)) if s == "running" => id,
            Some((id, s)) => {
                assert_eq!(s, "paused");
                let (st, v) = self
                    .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
                    .await;
                assert_eq!(st, 200, "the snapshot did not resume: {v}");
                id
            }
            None => {
                let (st, v) = self
                    .call(
                        M::POST,
                        "/sandboxes",
                        Some(json!({"workspace_id": WORKSPACE, "memory_mb": 256})),
                    )
                    .await;
                assert_eq!(st, 200, "{v}");
                self.process = None;
                v["sandbox_id"].as_str().unwrap().to_owned()
            }
        };
        let want: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        let got = self
            .exec(&id, "cat /workspace/log 2>/dev/null || true")
            .await;
        assert_eq!(got, want, "workspace data was lost");
        match &self.process {
            Some((sb, pid)) if sb == &id => {
                let (st, p) = self
                    .call(M::GET, &format!("/sandboxes/{id}/processes/{pid}"), None)
                    .await;
                assert_eq!(st, 200, "{p}");
                assert_eq!(p["status"], "running", "the background process died: {p}");
            }
            _ => {
                let (st, p) = self
                    .call(
                        M::POST,
                        &format!("/sandboxes/{id}/processes"),
                        Some(json!({"command": "sleep 86400"})),
                    )
                    .await;
                assert_eq!(st, 201, "{p}");
                self.process = Some((id.clone(), p["pid"].as_u64().unwrap()));
            }
        }
        let line = format!("line {}", self.lines.len() + 1);
        self.exec(&id, &format!("echo '{line}' >> /workspace/log"))
            .await;
        self.lines.push(line);
        id
    }

    /// Sets up what the operation at `point` needs, on a normal server.
    async fn prepare(&mut self, point: &str) -> Option<String> {
        self.restart(&[]);
        let op = point.split(':').next().unwrap();
        match op {
            "create" => {
                if let Some((id, _)) = self.sandbox().await {
                    self.running().await;
                    let (st, v) = self
                        .call(M::DELETE, &format!("/sandboxes/{id}"), None)
                        .await;
                    assert_eq!(st, 200, "{v}");
                }
                self.process = None;
                None
            }
            "resume" => {
                let id = self.running().await;
                let (st, v) = self
                    .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
                    .await;
                assert_eq!(st, 200, "{v}");
                Some(id)
            }
            _ => Some(self.running().await),
        }
    }

    /// Runs the operation of `point` on a server that dies there; checks
    /// it died by its own SIGKILL.
    async fn crash(&mut self, point: &str, id: Option<&str>) {
        self.restart(&[("LOCALE2B_CRASH_AT", point)]);
        let (m, path, body) = match (point.split(':').next().unwrap(), id) {
            ("create", _) => (
                M::POST,
                "/sandboxes".to_owned(),
                Some(json!({"workspace_id": WORKSPACE, "memory_mb": 256})),
            ),
            ("pause", Some(id)) => (M::POST, format!("/sandboxes/{id}/pause"), None),
            ("resume", Some(id)) => (M::POST, format!("/sandboxes/{id}/resume"), None),
            ("destroy", Some(id)) => (M::DELETE, format!("/sandboxes/{id}"), None),
            other => panic!("{other:?}"),
        };
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.url))
            .header("X-API-Key", KEY)
            .timeout(Duration::from_secs(180));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let answer = req.send().await;
        assert!(
            answer.is_err(),
            "{point}: the server answered instead of crashing: {:?}",
            answer.map(|r| r.status())
        );
        let mut server = self.server.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = server.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{point}: the server did not die");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(9), "{point}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_at_any_point_loses_nothing() {
    let Some(image) = image_dir() else { return };
    let rounds: usize = std::env::var("LOCALE2B_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let base = base_dir(&image);
    let _cleanup = KillOnDrop(base.path().to_path_buf());
    let mut w = World {
        base,
        http: reqwest::Client::new(),
        server: None,
        url: String::new(),
        lines: Vec::new(),
        process: None,
    };
    for round in 1..=rounds {
        for point in locale2b_manager::CRASH_POINTS {
            let id = w.prepare(point).await;
            w.crash(point, id.as_deref()).await;
            w.restart(&[]);
            let found = w.sandbox().await;
            assert_eq!(
                found.as_ref().map(|(_, s)| s.as_str()),
                expected(point),
                "round {round}, crash at {point}: {found:?}"
            );
            if found.is_none() {
                let (st, ws) = w
                    .call(M::GET, &format!("/workspaces/{WORKSPACE}"), None)
                    .await;
                assert_eq!(
                    st, 200,
                    "round {round}, {point}: the workspace is gone: {ws}"
                );
            }
            // Running again, with every line and the process: checked here.
            w.running().await;
            eprintln!("round {round}: crash at {point}: ok");
        }
    }
    w.kill_server();
}
