//! End-to-end: `POST /sandboxes/{id}/fork` against real guests. Children
//! continue from the parent's memory (a running counter, files in tmpfs)
//! and disk, each is its own sandbox, and nobody sees another's writes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn exec(s: &Server, id: &str, command: &str) -> String {
    s.exec_ok(id, command).await
}

async fn counter(s: &Server, id: &str) -> u64 {
    exec(s, id, "cat /dev/shm/counter")
        .await
        .trim()
        .parse()
        .unwrap()
}

/// Waits (up to 30 s) until the counter of `id` is above `above`: the
/// counter process runs there.
async fn counter_moves(s: &Server, id: &str, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = counter(s, id).await;
        if now > above {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the counter of {id} stays at {now}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_children_continue_from_the_parent_and_do_not_see_each_others_writes() {
    let Some(image) = image_dir() else { return };
    // No eviction: the capacity check below must refuse, not pause others.
    let s = Server::start_with(&image, 8, |c| {
        c.manager.eviction = locale2b_config::Eviction::None;
    })
    .await;
    let base = s._base.path().to_path_buf();
    let (st, parent) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::OK, "{parent}");
    let pid = parent["sandbox_id"].as_str().unwrap().to_owned();

    // A counter in memory, a file in tmpfs, a file on disk.
    assert_eq!(exec(&s, &pid, "stat -f -c %T /dev/shm").await, "tmpfs\n");
    let (st, p) = s
        .call(
            M::POST,
            &format!("/sandboxes/{pid}/processes"),
            Some(json!({"command": "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter.new; mv /dev/shm/counter.new /dev/shm/counter; sleep 0.05; done", "stdin": false})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    exec(
        &s,
        &pid,
        "echo parent-ram > /dev/shm/ram && echo parent-disk > /workspace/disk && sync",
    )
    .await;
    let before = counter_moves(&s, &pid, 2).await;

    let t = Instant::now();
    let (st, forked) = s
        .call(
            M::POST,
            &format!("/sandboxes/{pid}/fork"),
            Some(json!({"count": 5})),
        )
        .await;
    println!("TIMING fork into 5: {:?}", t.elapsed());
    assert_eq!(st, StatusCode::OK, "{forked}");
    let children: Vec<Value> = forked["sandboxes"].as_array().unwrap().clone();
    assert_eq!(children.len(), 5);
    let ids: Vec<String> = children
        .iter()
        .map(|c| c["sandbox_id"].as_str().unwrap().to_owned())
        .collect();
    for c in &children {
        assert_eq!(c["boot"], "fork", "{c}");
        assert_eq!(c["forked_from"], pid.as_str(), "{c}");
        assert_eq!(c["status"], "running");
        assert_ne!(c["workspace_id"], parent["workspace_id"]);
    }

    // Each child continues from the parent: its counter goes on from at
    // least the value before the fork, and it has the parent's files.
    for id in &ids {
        let at_fork = counter(&s, id).await;
        assert!(at_fork >= before, "child {id} counter {at_fork} < {before}");
        counter_moves(&s, id, at_fork).await;
        let out = exec(
            &s,
            id,
            "cat /proc/sys/kernel/hostname /dev/shm/ram /workspace/disk",
        )
        .await;
        assert_eq!(out, format!("{id}\nparent-ram\nparent-disk\n"));
    }

    // Writes in one child are seen by no one else.
    exec(
        &s,
        &ids[0],
        "echo child-ram > /dev/shm/ram && echo child-disk > /workspace/disk && sync",
    )
    .await;
    for id in ids.iter().skip(1).chain(std::iter::once(&pid)) {
        let out = exec(&s, id, "cat /dev/shm/ram /workspace/disk").await;
        assert_eq!(
            out, "parent-ram\nparent-disk\n",
            "{id} sees the child's writes"
        );
    }
    assert_eq!(
        exec(&s, &ids[0], "cat /dev/shm/ram /workspace/disk").await,
        "child-ram\nchild-disk\n"
    );
    // The parent ran on all along.
    counter_moves(&s, &pid, before).await;

    // The fork's snapshot is gone once the children run.
    let left: Vec<_> = std::fs::read_dir(base.join("forks"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "fork snapshot left: {left:?}");

    // Bad input and states.
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{pid}/fork"),
            Some(json!({"count": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("count"),
        "{e}"
    );
    let (st, e) = s
        .call(M::POST, "/sandboxes/sb-nosuchsandbx/fork", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{e}");
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{}/pause", ids[1]), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = s
        .call(M::POST, &format!("/sandboxes/{}/fork", ids[1]), None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    // Beyond capacity (8 sandboxes: 6 hold a VM): none is left behind.
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{pid}/fork"),
            Some(json!({"count": 4})),
        )
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    let (_, list) = s.call(M::GET, "/sandboxes", None).await;
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 6, "{list}");

    // A fork of a fork child (whose RAM is its own) works too.
    let (st, grand) = s
        .call(M::POST, &format!("/sandboxes/{}/fork", ids[2]), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{grand}");
    let gid = grand["sandboxes"][0]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        exec(&s, &gid, "cat /dev/shm/ram /workspace/disk").await,
        "parent-ram\nparent-disk\n"
    );

    for id in ids.iter().chain([&pid, &gid]) {
        let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
        assert_eq!(st, StatusCode::OK);
    }
}
