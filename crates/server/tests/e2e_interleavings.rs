//! End-to-end: calls that meet a lifecycle change get a true answer. An
//! exec running when its sandbox is paused or destroyed answers 409 naming
//! what happened (never 502), and a create that loses to a destroy answers
//! 409 with nothing left behind. Real guests.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Starts `command` as an exec in the background; answers its outcome.
fn exec_in_background(
    s: &Server,
    id: &str,
    command: &str,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let req = s
        .req(M::POST, &format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": command, "timeout_ms": 60_000}));
    tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        let st = resp.status();
        (st, resp.json().await.unwrap())
    })
}

/// Waits until `path` exists in the guest.
async fn wait_for_file(s: &Server, id: &str, path: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (st, _) = s
            .call(
                M::GET,
                &format!("/sandboxes/{id}/files/stat?path={path}"),
                None,
            )
            .await;
        if st == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_destroy_settle_calls_and_a_create_loses_to_a_destroy() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 2, |c| c.manager.settle_timeout_sec = 1).await;
    let (st, body) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let id = body["sandbox_id"].as_str().unwrap().to_owned();

    // An exec in flight when the sandbox is paused.
    let running = exec_in_background(&s, &id, "touch /workspace/one && sleep 30");
    wait_for_file(&s, &id, "/workspace/one").await;
    let (st, paused) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{paused}");
    assert_eq!(paused["status"], "paused");
    let (st, out) = running.await.unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{out}");
    let msg = out["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("was paused while this call was running"),
        "{msg}"
    );

    // An exec in flight when the sandbox is destroyed.
    let (st, r) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let running = exec_in_background(&s, &id, "touch /workspace/two && sleep 30");
    wait_for_file(&s, &id, "/workspace/two").await;
    let (st, d) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK, "{d}");
    let (st, out) = running.await.unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{out}");
    let msg = out["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("was destroyed while this call was running"),
        "{msg}"
    );

    // A destroy while the create is still booting: the destroy wins.
    let create = {
        let req = s
            .req(M::POST, "/sandboxes")
            .json(&json!({"memory_mb": 256}));
        tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            let st = resp.status();
            (st, resp.json::<Value>().await.unwrap())
        })
    };
    let deadline = Instant::now() + WAIT;
    let starting = loop {
        let (st, list) = s.call(M::GET, "/sandboxes", None).await;
        assert_eq!(st, StatusCode::OK);
        let found = list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|sb| sb["status"] == "starting")
            .map(|sb| sb["sandbox_id"].as_str().unwrap().to_owned());
        if let Some(found) = found {
            break found;
        }
        assert!(
            !create.is_finished(),
            "the create ended before it was seen starting"
        );
        assert!(Instant::now() < deadline, "no sandbox was ever starting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (st, d) = s
        .call(M::DELETE, &format!("/sandboxes/{starting}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    let (st, out) = create.await.unwrap();
    assert_eq!(st, StatusCode::CONFLICT, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("destroyed while it was starting"),
        "{out}"
    );
    let (st, _) = s
        .call(M::GET, &format!("/sandboxes/{starting}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(
        locale2b_testkit::pids_mentioning(&starting).is_empty(),
        "a VM of the destroyed sandbox is still running"
    );
}
