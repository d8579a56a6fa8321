//! End-to-end: the data path tells the truth. Pseudo-files and FIFOs,
//! files of every size through the JSON and the streaming endpoints,
//! atomic replacement under a concurrent reader, env names, against real
//! guests.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn sha(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` bytes that do not compress (xorshift from `seed`).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

async fn create(s: &Server) -> String {
    let (st, body) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 512})))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["sandbox_id"].as_str().unwrap().to_owned()
}

async fn exec(s: &Server, id: &str, command: &str) -> Value {
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": command, "timeout_ms": 60_000})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["exit_code"], 0, "{command}: {out}");
    out
}

async fn read_utf8(s: &Server, id: &str, path: &str, extra: &str) -> Value {
    let (st, body) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path={path}&encoding=utf-8{extra}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{path}: {body}");
    body
}

async fn checksum(s: &Server, id: &str, path: &str) -> String {
    let (st, body) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/checksum?path={path}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["sha256"].as_str().unwrap().to_owned()
}

async fn json_write(s: &Server, id: &str, path: &str, data: &[u8]) -> (StatusCode, Value) {
    s.call(
        M::POST,
        &format!("/sandboxes/{id}/files/write"),
        Some(json!({"path": path, "content": b64(data)})),
    )
    .await
}

async fn put(s: &Server, id: &str, path: &str, data: Vec<u8>, sha256: &str) -> (StatusCode, Value) {
    let resp = s
        .req(
            M::PUT,
            &format!("/sandboxes/{id}/files/content?path={path}"),
        )
        .header("X-Content-SHA256", sha256)
        .body(data)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pseudo_files_fifos_big_json_writes_and_env_names_get_true_answers() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;

    // Pseudo-files have st_size 0 but hold text: read until their end.
    let status = read_utf8(&s, &id, "/proc/self/status", "").await;
    let text = status["content"].as_str().unwrap();
    assert!(text.contains("Name:") && text.contains("Pid:"), "{status}");
    assert_eq!(status["eof"], true);
    let cpu = read_utf8(&s, &id, "/proc/cpuinfo", "").await;
    assert!(
        cpu["content"].as_str().unwrap().contains("processor"),
        "{cpu}"
    );
    // The same through the streaming endpoint.
    let raw = s
        .req(
            M::GET,
            &format!("/sandboxes/{id}/files/content?path=/proc/meminfo"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert!(String::from_utf8(raw.bytes().await.unwrap().to_vec())
        .unwrap()
        .contains("MemTotal:"));

    // A device without an end: the length asked for, and not the end.
    let (st, zero) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/dev/zero&length=4096"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{zero}");
    let z = b64d(zero["content"].as_str().unwrap());
    assert_eq!(z.len(), 4096);
    assert!(z.iter().all(|&b| b == 0));
    assert_eq!(zero["eof"], false);

    // A FIFO whose writer is waiting for a reader: what it writes.
    exec(&s, &id, "mkfifo /tmp/fifo").await;
    let (st, p) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({"command": "echo through the pipe > /tmp/fifo"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{p}");
    let fifo = read_utf8(&s, &id, "/tmp/fifo", "").await;
    assert_eq!(fifo["content"], "through the pipe\n", "{fifo}");
    assert_eq!(fifo["eof"], true);

    // 8 MiB through files/write (once a 502) and back through files/read.
    let data = noise(8 * MIB, 8);
    let (st, w) = json_write(&s, &id, "/workspace/eight", &data).await;
    assert_eq!(st, StatusCode::OK, "{w}");
    assert_eq!(w["size"], 8 * MIB);
    assert_eq!(w["sha256"], sha(&data));
    let (st, r) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/workspace/eight"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(sha(&b64d(r["content"].as_str().unwrap())), sha(&data));
    assert_eq!(r["eof"], true);

    // Beyond the body limit (16 MiB here): 413 naming the limit and the
    // streaming endpoint, for a write and for a read.
    let (st, e) = json_write(&s, &id, "/workspace/big", &noise(13 * MIB, 13)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("16777216") && msg.contains("files/content"),
        "{msg}"
    );
    let (st, _) = put(
        &s,
        &id,
        "/workspace/big",
        noise(13 * MIB, 13),
        &sha(&noise(13 * MIB, 13)),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, e) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/workspace/big"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("files/content"),
        "{e}"
    );

    // Env names follow POSIX rules, wherever an env is given.
    let bad = json!({"A=B": "x"});
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "env", "env": bad})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("A=B"),
        "{e}"
    );
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({"command": "env", "env": {"1X": "y"}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("1X"),
        "{e}"
    );
    let (st, e) = s
        .call(M::POST, "/sandboxes", Some(json!({"env": {"": "z"}})))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let ok = exec(&s, &id, "env").await;
    assert!(!ok["stdout"].as_str().unwrap().contains("A=B"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_size_round_trip_and_a_reader_never_sees_half_a_file() {
    let Some(image) = image_dir() else { return };
    // A body limit that lets 100 MiB through JSON (base64 is 4/3).
    let s = Server::start_with(&image, 2, |c| c.server.max_body_bytes = 160 * MIB).await;
    let id = create(&s).await;

    for (i, n) in [1024, 7 * MIB, 12 * MIB, 100 * MIB].into_iter().enumerate() {
        let data = noise(n, i as u64 + 1);
        let want = sha(&data);
        let path = format!("/workspace/f{n}");

        // JSON both ways.
        let (st, w) = json_write(&s, &id, &path, &data).await;
        assert_eq!(st, StatusCode::OK, "{n}: {w}");
        assert_eq!(w["size"], n);
        assert_eq!(w["sha256"], want, "{n}");
        let (st, r) = s
            .call(
                M::GET,
                &format!("/sandboxes/{id}/files/read?path={path}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{n}");
        assert_eq!(r["size"], n);
        assert_eq!(r["eof"], true);
        assert_eq!(sha(&b64d(r["content"].as_str().unwrap())), want, "{n}");
        assert_eq!(checksum(&s, &id, &path).await, want, "{n}");

        // Raw bytes both ways, to another file.
        let raw = format!("{path}.raw");
        let (st, w) = put(&s, &id, &raw, data.clone(), &want).await;
        assert_eq!(st, StatusCode::OK, "{n}: {w}");
        assert_eq!(w["sha256"], want);
        let resp = s
            .req(M::GET, &format!("/sandboxes/{id}/files/content?path={raw}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.content_length(), Some(n as u64));
        let got = resp.bytes().await.unwrap();
        assert_eq!(got.len(), n);
        assert_eq!(sha(&got), want, "{n}");
    }

    // A range, and a range outside the file.
    let data = noise(1024, 1);
    let resp = s
        .req(
            M::GET,
            &format!("/sandboxes/{id}/files/content?path=/workspace/f1024"),
        )
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 100-199/1024");
    assert_eq!(&resp.bytes().await.unwrap()[..], &data[100..200]);
    let resp = s
        .req(
            M::GET,
            &format!("/sandboxes/{id}/files/content?path=/workspace/f1024"),
        )
        .header("Range", "bytes=5000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A body that does not match its checksum writes nothing.
    let (st, e) = put(&s, &id, "/workspace/f1024", noise(1024, 99), &sha(&data)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(checksum(&s, &id, "/workspace/f1024").await, sha(&data));

    // While 100 MiB replace 100 MiB, every reader sees the old file or
    // the new one.
    let path = format!("/workspace/f{}", 100 * MIB);
    let old = sha(&noise(100 * MIB, 4));
    let new_data = noise(100 * MIB, 77);
    let new = sha(&new_data);
    let writer = {
        let req = s
            .req(
                M::PUT,
                &format!("/sandboxes/{id}/files/content?path={path}"),
            )
            .body(new_data);
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        seen.push(checksum(&s, &id, &path).await);
    }
    assert_eq!(writer.await.unwrap(), StatusCode::OK);
    seen.push(checksum(&s, &id, &path).await);
    assert!(seen.len() >= 2, "no read happened during the write");
    for got in &seen {
        assert!(got == &old || got == &new, "a reader saw a mix: {got}");
    }
    assert_eq!(seen.last().unwrap(), &new);
}
