//! kill -9 of the real `locale2b serve` process with three running
//! sandboxes; after a restart all three are listed and usable.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_server_keeps_sandboxes_usable() {
    use reqwest::Method as M;
    let Some(image) = image_dir() else { return };
    let base = base_dir(&image);
    let http = reqwest::Client::new();
    let _cleanup = KillOnDrop(base.path().to_path_buf());

    let (mut server, url) = start(base.path(), &[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (st, v) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes"),
            Some(json!({"memory_mb": 256})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let id = v["sandbox_id"].as_str().unwrap().to_owned();
        let (st, _) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes/{id}/exec"),
            Some(json!({"command": format!("echo {i} > /workspace/n")})),
        )
        .await;
        assert_eq!(st, 200);
        ids.push(id);
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (mut server, url) = start(base.path(), &[]);
    let (st, list) = call(&http, M::GET, format!("{url}/sandboxes"), None).await;
    assert_eq!(st, 200);
    let listed: Vec<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandbox_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{list}");
    for (i, id) in ids.iter().enumerate() {
        assert!(listed.contains(&id.as_str()));
        let (st, out) = call(
            &http,
            M::POST,
            format!("{url}/sandboxes/{id}/exec"),
            Some(json!({"command": "cat /workspace/n"})),
        )
        .await;
        assert_eq!(st, 200, "{out}");
        assert_eq!(out["stdout"], format!("{i}\n"));
    }
    for id in &ids {
        let (st, _) = call(&http, M::DELETE, format!("{url}/sandboxes/{id}"), None).await;
        assert_eq!(st, 200);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
