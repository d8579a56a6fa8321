//! End-to-end: the real server on 127.0.0.1:0, the real manager, the qemu
//! backend and real guests, driven over HTTP like a client would.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;

use common::*;
use reqwest::Method as M;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_endpoint_against_a_real_guest() {
    let Some(image) = image_dir() else { return };
    let s = Server::start_with(&image, 1, |c| {
        c.manager.eviction = locale2b_config::Eviction::None
    })
    .await;

    // Health is public.
    let health: Value = reqwest::get(format!("{}/health", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["active_sandboxes"], 0);
    assert_eq!(health["backend"], "qemu");

    // Wrong key, missing key.
    let r = s
        .http
        .get(format!("{}/sandboxes", s.url))
        .header("X-API-Key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .get(format!("{}/sandboxes", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Create (CompyMac shape) and read it back.
    let (st, created) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256, "vcpu_count": 1, "template": "default", "workspace_id": "e2e-ws"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{created}");
    let id = created["sandbox_id"].as_str().unwrap().to_owned();
    assert_eq!(created["workspace_id"], "e2e-ws");
    assert_eq!(created["status"], "running");
    let (st, listed) = s.call(M::GET, "/sandboxes", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(listed["sandboxes"][0]["sandbox_id"], id.as_str());
    let (st, got) = s.call(M::GET, &format!("/sandboxes/{id}"), None).await;
    assert_eq!((st, got["memory_mb"].as_u64()), (StatusCode::OK, Some(256)));

    // Over capacity: 503 with Retry-After.
    let r = s
        .req(M::POST, "/sandboxes")
        .json(&json!({"memory_mb": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));

    // Exec with working_dir, env and both timeout spellings.
    let (st, out) = s
        .call(M::POST, &format!("/sandboxes/{id}/exec"), Some(json!({"command": "pwd; echo $GREETING", "working_dir": "/tmp", "env": {"GREETING": "hi"}, "timeout_ms": 10000})))
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "/tmp\nhi\n");
    assert_eq!(out["exit_code"], 0);
    assert!(out["error"].is_null());
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "sleep 30", "timeout_seconds": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["timed_out"], true);
    assert!(out["error"].as_str().unwrap().contains("timed out"));
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "exit 7", "timeout_ms": 5000})),
        )
        .await;
    assert_eq!((st, out["exit_code"].as_i64()), (StatusCode::OK, Some(7)));

    // A missing working directory or user is the request's fault: 400
    // naming it (a 404 on exec would read as "no such sandbox").
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "true", "working_dir": "/no/such/dir"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{out}");
    assert_eq!(out["error"]["code"], "invalid_input");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/dir"),
        "{out}"
    );
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "true", "user": "nosuchuser"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nosuchuser"),
        "{out}"
    );

    // Binary write/read through base64.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (st, w) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/files/write"),
            Some(json!({"path": "/workspace/bin.dat", "content": b64})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{w}");
    let (st, r) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/workspace/bin.dat"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(r["content"].as_str().unwrap())
            .unwrap(),
        bytes
    );

    // Plain text with an explicit encoding; without it: 400 explaining the fix.
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{id}/files/write"), Some(json!({"path": "/workspace/notes/a b.txt", "content": "héllo\n", "encoding": "utf-8"})))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, err) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/files/write"),
            Some(json!({"path": "/workspace/x.txt", "content": "plain text here!"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("encoding"),
        "{err}"
    );
    let (st, _) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/workspace/x.txt"),
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "rejected write must not store anything"
    );

    // Listing shows path, is_directory, size.
    let (st, list) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/list?path=/workspace"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let files = list["files"].as_array().unwrap();
    let bin = files
        .iter()
        .find(|f| f["path"] == "/workspace/bin.dat")
        .expect("bin.dat listed");
    assert_eq!(
        (bin["is_directory"].as_bool(), bin["size"].as_u64()),
        (Some(false), Some(70_000))
    );
    let notes = files
        .iter()
        .find(|f| f["path"] == "/workspace/notes")
        .expect("notes listed");
    assert_eq!(notes["is_directory"], true);

    // mkdir, stat, delete.
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/files/mkdir"),
            Some(json!({"path": "/workspace/d/e", "parents": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, stat) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/stat?path=/workspace/d/e"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{stat}");
    let r = s
        .req(
            M::DELETE,
            &format!("/sandboxes/{id}/files?path=/workspace/d&recursive=true"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (st, _) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/stat?path=/workspace/d"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Multipart upload of 3 MiB, streamed in chunks; read back.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(big.clone()).file_name("big.bin"),
    );
    let r = s
        .req(
            M::POST,
            &format!("/sandboxes/{id}/files/upload?path=/workspace/up/big.bin"),
        )
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (st, out) = s
        .call(M::POST, &format!("/sandboxes/{id}/exec"), Some(json!({"command": "stat -c %s /workspace/up/big.bin; ls /workspace/up | wc -l", "timeout_ms": 10000})))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        out["stdout"],
        format!("{}\n1\n", big.len()),
        "no temp files left"
    );
    let (_, r) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/workspace/up/big.bin"),
            None,
        )
        .await;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(r["content"].as_str().unwrap())
            .unwrap(),
        big
    );

    // Missing file and unknown sandbox: 404.
    let (st, _) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/nope"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, e) = s
        .call(
            M::POST,
            "/sandboxes/sb-doesnotexist/exec",
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "not_found");

    // Pause/resume keep files; workspaces are visible.
    let (st, p) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(
        (st, p["status"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{p}"
    );
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{e}");
    let (st, r) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(
        (st, r["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{r}"
    );
    assert_eq!(r["sandbox_id"], id.as_str());
    let (_, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "cat '/workspace/notes/a b.txt'"})),
        )
        .await;
    assert_eq!(out["stdout"], "héllo\n");
    let (st, ws) = s.call(M::GET, "/workspaces/e2e-ws", None).await;
    assert_eq!(st, StatusCode::OK, "{ws}");
    assert!(ws["lineage"].as_array().unwrap().len() >= 3);
    let (st, wss) = s.call(M::GET, "/workspaces", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(wss.to_string().contains("e2e-ws"));
    let (st, _) = s.call(M::DELETE, "/workspaces/e2e-ws", None).await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "workspace in use must not be deleted"
    );

    // Destroy; again is 404 (CompyMac treats it as success).
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.call(M::DELETE, "/workspaces/e2e-ws", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(M::GET, "/workspaces/e2e-ws", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
