//! Sandbox lifetimes through the real API with real guests: a sandbox ends
//! at its end time (destroyed, or paused with nothing lost), a timeout
//! change moves the end, metadata is kept, bad values are refused.

#![allow(clippy::unwrap_used)]

mod common;

use common::{image_dir, Server};
use reqwest::{Method as M, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

fn end_at(info: &Value) -> SystemTime {
    humantime::parse_rfc3339(info["end_at"].as_str().expect("end_at set")).unwrap()
}

/// Polls `GET /sandboxes/{id}` until `done` holds for (status, body) or the
/// deadline passes; returns the last answer.
async fn wait_for(
    s: &Server,
    id: &str,
    deadline: SystemTime,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> (StatusCode, Value) {
    loop {
        let (st, body) = s.call(M::GET, &format!("/sandboxes/{id}"), None).await;
        if done(st, &body) || SystemTime::now() > deadline {
            return (st, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(s: &Server, body: Value) -> Value {
    let (st, info) = s.call(M::POST, "/sandboxes", Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{info}");
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_is_destroyed_at_its_end_time_and_not_before() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let info = create(
        &s,
        json!({"timeout_sec": 5, "metadata": {"team": "red", "run": "7"}}),
    )
    .await;
    let id = info["sandbox_id"].as_str().unwrap().to_owned();
    assert_eq!(info["timeout_sec"], 5);
    assert_eq!(info["on_timeout"], "destroy");
    assert_eq!(info["metadata"], json!({"team": "red", "run": "7"}));
    let end = end_at(&info);
    let left = end.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(5), "end {left:?} away");

    // Shortly before the end it still runs and answers commands.
    let (st, body) = wait_for(&s, &id, end - Duration::from_millis(800), |_, _| false).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
    // Soon after, it is gone.
    let (st, body) = wait_for(&s, &id, end + Duration::from_secs(3), |st, _| {
        st == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "still there: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_change_moves_the_end_and_zero_removes_it() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let info = create(&s, json!({"timeout_sec": 3})).await;
    let id = info["sandbox_id"].as_str().unwrap().to_owned();
    let first_end = end_at(&info);

    let (st, longer) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout_sec": 60})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{longer}");
    assert_eq!(longer["timeout_sec"], 60);
    assert!(end_at(&longer) > first_end + Duration::from_secs(50));
    // Past the first end (and a margin), it still runs commands.
    let (_, body) = wait_for(&s, &id, first_end + Duration::from_secs(2), |_, _| false).await;
    assert_eq!(body["status"], "running", "{body}");
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "echo alive"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(out["stdout"], "alive\n");

    let (st, unlimited) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout_sec": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(unlimited["end_at"].is_null(), "{unlimited}");
    assert!(unlimited["timeout_sec"].is_null());

    // Bad values: over the maximum, wrong types, unknown sandbox.
    let (st, err) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout_sec": 100_000_000u64})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_sandbox_timeout_sec"));
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout_sec": "soon"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s
        .call(
            M::POST,
            "/sandboxes/sb-nosuchsandbox/timeout",
            Some(json!({"timeout_sec": 5})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, err) = s
        .call(
            M::POST,
            "/sandboxes",
            Some(json!({"on_timeout": "explode"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (st, err) = s
        .call(M::POST, "/sandboxes", Some(json!({"metadata": many})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("metadata"));
    s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_timeout_pause_nothing_is_lost_and_a_resume_starts_a_new_lifetime() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let info = create(
        &s,
        json!({"timeout_sec": 4, "on_timeout": "pause", "workspace_id": "lifetime-pause"}),
    )
    .await;
    let id = info["sandbox_id"].as_str().unwrap().to_owned();
    let end = end_at(&info);
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "echo kept > /workspace/note; nohup sleep 600 >/dev/null 2>&1 & echo $! > /workspace/pid"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    let (_, paused) = wait_for(&s, &id, end + Duration::from_secs(30), |_, b| {
        b["status"] == "paused"
    })
    .await;
    assert_eq!(paused["status"], "paused", "{paused}");
    assert!(paused["end_at"].is_null(), "{paused}");
    assert_eq!(paused["timeout_sec"], 4);

    // Give the next lifetime more room than a TCG restore needs.
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout_sec": 120})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, resumed) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{resumed}");
    let left = end_at(&resumed).duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(100), "{resumed}");
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "cat /workspace/note; kill -0 $(cat /workspace/pid) && echo running"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(out["stdout"], "kept\nrunning\n", "{out}");
    s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
}
