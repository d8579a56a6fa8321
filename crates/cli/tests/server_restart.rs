//! kill -9 of the real `locale2b serve` process with three running
//! sandboxes; after a restart all three are listed and usable, and an
//! exposed port answers again.

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
    // A web server in the first sandbox behind an exposed port.
    let first = ids[0].clone();
    let (st, v) = call(
        &http,
        M::POST,
        format!("{url}/sandboxes/{first}/processes"),
        Some(json!({"command": "cd /workspace && exec python3 -m http.server 8000 --bind 127.0.0.1"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let probe = "for i in $(seq 500); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
    let (st, v) = call(
        &http,
        M::POST,
        format!("{url}/sandboxes/{first}/exec"),
        Some(json!({"command": format!("bash -c '{probe}'"), "timeout_ms": 60_000})),
    )
    .await;
    assert_eq!((st, v["exit_code"].as_i64()), (200, Some(0)), "{v}");
    let (st, exposed) = call(
        &http,
        M::POST,
        format!("{url}/sandboxes/{first}/ports/expose"),
        Some(json!({"port": 8000})),
    )
    .await;
    assert_eq!(st, 200, "{exposed}");
    let app = format!("{}n", exposed["url"].as_str().unwrap());
    assert_eq!(
        http.get(&app).send().await.unwrap().text().await.unwrap(),
        "0\n"
    );

    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (mut server, url) = start(base.path(), &[]);
    // The exposed port is bound again and reaches the same guest server.
    let (st, ports) = call(
        &http,
        M::GET,
        format!("{url}/sandboxes/{first}/ports"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{ports}");
    let again = &ports["ports"][0];
    assert_eq!(again["port"], 8000, "{ports}");
    println!(
        "exposed port after the restart: host port {} (before: {})",
        again["host_port"], exposed["host_port"]
    );
    let app = format!("{}n", again["url"].as_str().unwrap());
    assert_eq!(
        http.get(&app).send().await.unwrap().text().await.unwrap(),
        "0\n"
    );
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
