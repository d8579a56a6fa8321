//! End-to-end: tenants against real guests. Keys come from a keys file
//! (hashes, scopes, quotas) that is edited while the server runs; a key
//! never sees another key's sandbox or workspace on any route, native or
//! E2B; quotas hold under concurrent creates; the guest has no shared
//! filesystem and wiping its root leaves the template and other sandboxes
//! working.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";
const OPS: &str = "ops-key-0123456789abcdef";
const CAROL: &str = "carol-key-0123456789abcdef";

async fn as_key(
    s: &Server,
    key: &str,
    method: M,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    s.call_as(key, method, path, body).await
}

fn ids(list: &Value, field: &str, key: &str) -> Vec<String> {
    list[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect()
}

/// Writes the keys file by rename (what editors and config managers do).
fn write_keys(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_see_only_their_own_sandboxes_quotas_hold_and_keys_change_without_a_restart() {
    let Some(image) = image_dir() else { return };
    let keys_dir = tempfile::tempdir().unwrap();
    let keys_file = keys_dir.path().join("keys");
    let base_keys = format!(
        "{} max_sandboxes=1\n{} max_memory_mb=200\n{} admin=true\n",
        locale2b_server::key_file_line("alice", ALICE),
        locale2b_server::key_file_line("bob", BOB),
        locale2b_server::key_file_line("ops", OPS),
    );
    write_keys(&keys_file, &base_keys);
    let file = keys_file.clone();
    let s = Server::start_with(&image, 4, move |c| {
        c.server.api_keys_file = Some(file);
    })
    .await;
    let audit_path = s._base.path().join("audit.log");

    // Two creates at once with a quota of one: exactly one gets in.
    let create = || {
        as_key(
            &s,
            ALICE,
            M::POST,
            "/sandboxes",
            Some(json!({"memory_mb": 256})),
        )
    };
    let (a, b) = tokio::join!(create(), create());
    let (ok, refused) = if a.0 == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    assert_eq!(refused.0, StatusCode::FORBIDDEN, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "quota_exceeded");
    let msg = refused.1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("max_sandboxes=1") && msg.contains("alice"),
        "{msg}"
    );
    let id = ok.1["sandbox_id"].as_str().unwrap().to_owned();
    let ws = ok.1["workspace_id"].as_str().unwrap().to_owned();
    assert_eq!(ok.1["owner"], "alice");

    // At its quota, a create that would first build a template snapshot
    // is refused before that: no VM boots for it.
    let templates = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(s._base.path().join("templates"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = templates();
    let (st, out) = as_key(
        &s,
        ALICE,
        M::POST,
        "/sandboxes",
        Some(json!({"memory_mb": 256, "vcpu_count": 2, "boot": "template"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{out}");
    assert_eq!(out["error"]["code"], "quota_exceeded", "{out}");
    assert_eq!(
        templates(),
        before,
        "a refused create built a template snapshot"
    );

    // No shared-filesystem device (virtio 9P = 9, virtio-fs = 26).
    let (st, out) = as_key(
        &s,
        ALICE,
        M::POST,
        &format!("/sandboxes/{id}/exec"),
        Some(json!({"command": "cat /sys/bus/virtio/devices/*/device"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let devices: Vec<u32> = out["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| u32::from_str_radix(l.trim().trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert!(devices.contains(&2), "a block device is there: {devices:?}");
    assert!(
        !devices.contains(&9) && !devices.contains(&26),
        "a shared filesystem device: {devices:?}"
    );

    // Bob gets 404 for Alice's sandbox on every route.
    let sb = format!("/sandboxes/{id}");
    let routes: Vec<(M, String, Option<Value>)> = vec![
        (M::GET, sb.clone(), None),
        (M::GET, format!("{sb}/metrics"), None),
        (
            M::POST,
            format!("{sb}/exec"),
            Some(json!({"command": "id"})),
        ),
        (
            M::POST,
            format!("{sb}/files/write"),
            Some(json!({"path": "/tmp/x", "content": "x"})),
        ),
        (M::GET, format!("{sb}/files/read?path=/etc/hostname"), None),
        (M::GET, format!("{sb}/files/list?path=/"), None),
        (M::GET, format!("{sb}/files/stat?path=/"), None),
        (
            M::POST,
            format!("{sb}/files/mkdir"),
            Some(json!({"path": "/tmp/d"})),
        ),
        (M::DELETE, format!("{sb}/files?path=/tmp/x"), None),
        (
            M::GET,
            format!("{sb}/files/content?path=/etc/hostname"),
            None,
        ),
        (
            M::GET,
            format!("{sb}/files/checksum?path=/etc/hostname"),
            None,
        ),
        (
            M::POST,
            format!("{sb}/processes"),
            Some(json!({"command": "sleep 1"})),
        ),
        (M::GET, format!("{sb}/processes"), None),
        (M::GET, format!("{sb}/processes/1"), None),
        (M::GET, format!("{sb}/ports"), None),
        (
            M::POST,
            format!("{sb}/ports/expose"),
            Some(json!({"port": 8000})),
        ),
        (M::DELETE, format!("{sb}/ports/8000"), None),
        (
            M::POST,
            format!("{sb}/timeout"),
            Some(json!({"timeout_sec": 60})),
        ),
        (M::POST, format!("{sb}/fork"), Some(json!({}))),
        (M::POST, format!("{sb}/pause"), None),
        (M::POST, format!("{sb}/resume"), None),
        (M::DELETE, sb.clone(), None),
        (M::GET, format!("/e2b/sandboxes/{id}"), None),
        (
            M::POST,
            format!("/e2b/sandboxes/{id}/timeout"),
            Some(json!({"timeout": 60})),
        ),
        (M::POST, format!("/e2b/sandboxes/{id}/pause"), None),
        (
            M::POST,
            format!("/e2b/sandboxes/{id}/connect"),
            Some(json!({"timeout": 60})),
        ),
        (M::GET, format!("/e2b/sandboxes/{id}/metrics"), None),
        (M::DELETE, format!("/e2b/sandboxes/{id}"), None),
        (M::GET, format!("/workspaces/{ws}"), None),
        (M::DELETE, format!("/workspaces/{ws}"), None),
    ];
    for (method, path, body) in &routes {
        let (st, out) = as_key(&s, BOB, method.clone(), path, body.clone()).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "bob {method} {path}: {out}");
    }
    // Neither the native nor the E2B lists show it to Bob.
    let (_, list) = as_key(&s, BOB, M::GET, "/sandboxes", None).await;
    assert!(ids(&list, "sandboxes", "sandbox_id").is_empty(), "{list}");
    let (_, list) = as_key(&s, BOB, M::GET, "/workspaces", None).await;
    assert!(
        !ids(&list, "workspaces", "workspace_id").contains(&ws),
        "{list}"
    );
    let (_, e2b_list) = as_key(&s, BOB, M::GET, "/e2b/v2/sandboxes", None).await;
    assert_eq!(e2b_list, json!([]));
    // Bob cannot take Alice's workspace by naming it.
    let (st, out) = as_key(
        &s,
        BOB,
        M::POST,
        "/sandboxes",
        Some(json!({"workspace_id": ws})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{out}");
    // Alice's sandbox is untouched by all of that.
    let (st, info) = as_key(&s, ALICE, M::GET, &sb, None).await;
    assert_eq!(
        (st, info["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{info}"
    );

    // The admin key sees it in both lists and on its routes.
    let (st, _) = as_key(&s, OPS, M::GET, &sb, None).await;
    assert_eq!(st, StatusCode::OK);
    let (_, list) = as_key(&s, OPS, M::GET, "/sandboxes", None).await;
    assert!(ids(&list, "sandboxes", "sandbox_id").contains(&id));
    let (_, list) = as_key(&s, OPS, M::GET, "/workspaces", None).await;
    assert!(ids(&list, "workspaces", "workspace_id").contains(&ws));

    // Bob's memory quota: 256 MiB > 200 MiB, refused before any VM starts.
    let (st, out) = as_key(
        &s,
        BOB,
        M::POST,
        "/sandboxes",
        Some(json!({"memory_mb": 256})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_memory_mb=200"),
        "{out}"
    );
    // The E2B API answers a quota like E2B does: 429.
    let (st, out) = as_key(
        &s,
        ALICE,
        M::POST,
        "/e2b/sandboxes",
        Some(json!({"templateID": "base"})),
    )
    .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{out}");
    assert!(
        out["message"].as_str().unwrap().contains("max_sandboxes=1"),
        "{out}"
    );

    // The E2B calls are in the audit log like the native ones.
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let e2b_kill = format!("/e2b/sandboxes/{id}");
    let bob_kill: Vec<&Value> = lines
        .iter()
        .filter(|l| l["route"] == e2b_kill.as_str() && l["method"] == "DELETE")
        .collect();
    assert_eq!(bob_kill.len(), 1, "{audit}");
    assert_eq!(bob_kill[0]["key"], "bob");
    assert_eq!(bob_kill[0]["status"], 404);
    assert_eq!(bob_kill[0]["sandbox_id"], id.as_str());
    assert!(
        !audit.contains(BOB) && !audit.contains(ALICE),
        "a key in the audit log"
    );

    // Revoke Bob and add Carol by editing the file: no restart.
    write_keys(
        &keys_file,
        &format!(
            "{}\n{} max_sandboxes=1\n{} admin=true\n",
            locale2b_server::key_file_line("carol", CAROL),
            locale2b_server::key_file_line("alice", ALICE),
            locale2b_server::key_file_line("ops", OPS),
        ),
    );
    let (st, _) = as_key(&s, BOB, M::GET, "/sandboxes", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = as_key(&s, BOB, M::GET, "/e2b/v2/sandboxes", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, list) = as_key(&s, CAROL, M::GET, "/sandboxes", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(ids(&list, "sandboxes", "sandbox_id").is_empty(), "{list}");

    // Wiping the guest's root leaves the template and other sandboxes
    // working.
    let (st, out) = as_key(
        &s,
        ALICE,
        M::POST,
        &format!("{sb}/exec"),
        Some(json!({"command": "rm -rf --no-preserve-root / 2>/dev/null; ls /bin | wc -l", "timeout_ms": 120_000})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let (st, other) = as_key(
        &s,
        CAROL,
        M::POST,
        "/sandboxes",
        Some(json!({"memory_mb": 256})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{other}");
    let other_id = other["sandbox_id"].as_str().unwrap().to_owned();
    let (st, out) = as_key(
        &s,
        CAROL,
        M::POST,
        &format!("/sandboxes/{other_id}/exec"),
        Some(json!({"command": "ls /usr/bin/python3 /etc/os-release && echo intact"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(out["stdout"].as_str().unwrap().contains("intact"), "{out}");
    for (key, sid) in [(ALICE, &id), (CAROL, &other_id)] {
        let (st, out) = as_key(&s, key, M::DELETE, &format!("/sandboxes/{sid}"), None).await;
        assert_eq!(st, StatusCode::OK, "{out}");
    }
    // Alice's quota is free again once her sandbox is gone.
    let (_, list) = as_key(&s, ALICE, M::GET, "/sandboxes", None).await;
    assert!(ids(&list, "sandboxes", "sandbox_id").is_empty(), "{list}");
}
