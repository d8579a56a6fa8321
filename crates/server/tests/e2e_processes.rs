//! End-to-end: background processes, live output, PTYs (REST and a real
//! WebSocket client) and streamed exec, against real guests.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

async fn create(s: &Server) -> String {
    let (st, body) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    body["sandbox_id"].as_str().unwrap().to_owned()
}

async fn start(s: &Server, id: &str, body: Value) -> u64 {
    let (st, info) = s
        .call(M::POST, &format!("/sandboxes/{id}/processes"), Some(body))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{info}");
    assert_eq!(info["status"], "running");
    info["pid"].as_u64().unwrap()
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

/// Polls output by cursor (utf-8) until `needle` was seen.
async fn poll_until(
    s: &Server,
    id: &str,
    pid: u64,
    cursor: &mut u64,
    seen: &mut String,
    needle: &str,
) {
    let deadline = Instant::now() + WAIT;
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?} in {seen:?}"
        );
        let (st, out) = s
            .call(
                M::GET,
                &format!("/sandboxes/{id}/processes/{pid}/output?cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{out}");
        assert_eq!(out["dropped"], 0, "{out}");
        for c in out["chunks"].as_array().unwrap() {
            seen.push_str(c["data"].as_str().unwrap());
        }
        let next = out["next_cursor"].as_u64().unwrap();
        if next == *cursor {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *cursor = next;
    }
}

/// Writes text to a process's stdin (by pid or tag).
async fn type_in(s: &Server, id: &str, process: &str, text: &str) -> (StatusCode, Value) {
    s.call(
        M::POST,
        &format!("/sandboxes/{id}/processes/{process}/stdin"),
        Some(json!({"data": text})),
    )
    .await
}

async fn status(s: &Server, id: &str, pid: u64) -> Value {
    let (st, info) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes/{pid}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{info}");
    info
}

async fn wait_exited(s: &Server, id: &str, pid: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = status(s, id, pid).await;
        if info["status"] == "exited" {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never exited: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads binary WebSocket messages until `needle` was seen.
async fn ws_read_until(ws: &mut Ws, received: &mut String, needle: &str) {
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + WAIT;
    while !received.contains(needle) {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .unwrap_or_else(|_| panic!("never saw {needle:?} in {received:?}"))
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = msg {
            received.push_str(&String::from_utf8_lossy(&b));
        }
    }
}

/// Reads a whole NDJSON response.
async fn ndjson(resp: reqwest::Response) -> Vec<Value> {
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = tokio::time::timeout(WAIT, resp.text())
        .await
        .unwrap()
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_shell_session() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    let pid = start(
        &s,
        &id,
        json!({"command": "bash --norc", "tag": "agent-shell"}),
    )
    .await;
    let (st, w) = type_in(&s, &id, "agent-shell", "cd /tmp; export X=1; echo $X\n").await;
    assert_eq!(st, StatusCode::OK, "{w}");
    assert_eq!(w["pid"], pid);
    let (mut cursor, mut seen) = (0u64, String::new());
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "1\n").await;
    assert_eq!(seen, "1\n");
    type_in(&s, &id, "agent-shell", "echo $X-$PWD; echo oops >&2\n").await;
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "oops").await;
    assert!(seen.contains("1-/tmp\n"), "{seen}");
    // Listed, then killed by signal; the status says how it ended.
    let (_, list) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes"), None)
        .await;
    assert!(list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"] == pid && p["tag"] == "agent-shell"));
    let (st, r) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{pid}/signal"),
            Some(json!({"signal": "SIGKILL"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let info = wait_exited(&s, &id, pid).await;
    assert_eq!(info["signal"], 9, "{info}");
    assert_eq!(info["exit_code"], Value::Null);
    // After the end: 409 for signal, stdin and resize; the tail is still readable.
    for (path, body) in [
        ("signal", json!({"signal": "TERM"})),
        ("stdin", json!({"data": "x"})),
        ("resize", json!({"rows": 10, "cols": 10})),
    ] {
        let (st, e) = s
            .call(
                M::POST,
                &format!("/sandboxes/{id}/processes/{pid}/{path}"),
                Some(body),
            )
            .await;
        let want = if path == "resize" {
            StatusCode::BAD_REQUEST // no pty
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(st, want, "{path}: {e}");
    }
    let (_, out) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/processes/{pid}/output?cursor=0"),
            None,
        )
        .await;
    assert_eq!(out["status"], "exited");
    assert_eq!(out["complete"], true);
    assert!(out["stderr"].as_str().unwrap().contains("oops"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_followed_live_arrive_whole_and_unread_ones_count_their_drops() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    let mib = 50;
    exec(
        &s,
        &id,
        &format!("head -c {}M /dev/urandom > /tmp/burst && sha256sum /tmp/burst | cut -d' ' -f1 > /tmp/burst.sha", mib),
    )
    .await;
    let want_sha = exec(&s, &id, "cat /tmp/burst.sha").await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_owned();
    // Follow live from the start: every byte, in order.
    let pid = start(
        &s,
        &id,
        json!({"argv": ["cat", "/tmp/burst"], "stdin": false}),
    )
    .await;
    let resp = s
        .req(
            M::GET,
            &format!("/sandboxes/{id}/processes/{pid}/stream?cursor=0&encoding=base64"),
        )
        .send()
        .await
        .unwrap();
    let lines = ndjson(resp).await;
    let mut hasher = Sha256::new();
    let mut expect_cursor = 0u64;
    for l in &lines {
        match l["type"].as_str().unwrap() {
            "stdout" => {
                assert_eq!(
                    l["cursor"].as_u64().unwrap(),
                    expect_cursor,
                    "gap or overlap"
                );
                let d = b64d(l["data"].as_str().unwrap());
                expect_cursor += d.len() as u64;
                hasher.update(&d);
            }
            "end" => assert_eq!(l["exit_code"], 0),
            "dropped" => panic!("a live follower lost bytes: {l}"),
            _ => {}
        }
    }
    assert_eq!(expect_cursor, mib * 1024 * 1024);
    assert_eq!(hex(&hasher.finalize()), want_sha);
    assert_eq!(lines.last().unwrap()["type"], "end");

    // Nobody reads: a 64 KiB buffer keeps the tail and says how much went.
    exec(&s, &id, "head -c 1048576 /tmp/burst > /tmp/small").await;
    let (st, file) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/files/read?path=/tmp/small"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let file = b64d(file["content"].as_str().unwrap());
    let pid = start(
        &s,
        &id,
        json!({"argv": ["cat", "/tmp/small"], "stdin": false, "buffer_bytes": 65536}),
    )
    .await;
    wait_exited(&s, &id, pid).await;
    let (_, out) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/processes/{pid}/output?cursor=0&encoding=base64"),
            None,
        )
        .await;
    let dropped = out["dropped"].as_u64().unwrap();
    let tail = b64d(out["stdout"].as_str().unwrap());
    assert!(
        dropped > 0 && tail.len() <= 65536,
        "{dropped} {}",
        tail.len()
    );
    assert_eq!(dropped + tail.len() as u64, file.len() as u64);
    assert!(file.ends_with(&tail), "the tail is the end of the output");
    assert_eq!(out["cursor"], dropped);
    assert_eq!(out["next_cursor"], file.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pty_over_rest_and_over_a_websocket() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    let pid = start(
        &s,
        &id,
        json!({"argv": ["bash", "--norc", "-i"], "pty": {"rows": 24, "cols": 80}, "env": {"PS1": "$ "}}),
    )
    .await;
    let p = pid.to_string();
    let (mut cursor, mut seen) = (0u64, String::new());
    type_in(&s, &id, &p, "tty\n").await;
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "/dev/pts/").await;
    let (st, r) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{pid}/resize"),
            Some(json!({"rows": 33, "cols": 111})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    type_in(&s, &id, &p, "stty size\n").await;
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "33 111").await;
    // 0x03 interrupts a foreground sleep.
    type_in(&s, &id, &p, "sleep 100; echo never\n").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let out = exec(&s, &id, "pgrep -x sleep || true").await;
        if !out["stdout"].as_str().unwrap().trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sleep never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    type_in(&s, &id, &p, "\u{3}").await;
    type_in(&s, &id, &p, "echo back-$((40+2))\n").await;
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "back-42").await;
    assert!(t.elapsed() < Duration::from_secs(90));
    assert!(!seen.contains("\nnever"), "{seen}");

    // The same through a WebSocket: attach from the current cursor.
    let ws_url = format!(
        "{}/sandboxes/{id}/processes/{pid}/pty?cursor={cursor}",
        s.url.replacen("http://", "ws://", 1)
    );
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert("x-api-key", KEY.parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    use tokio_tungstenite::tungstenite::Message;
    let mut received = String::new();
    ws.send(Message::Binary(b"tty\n".to_vec().into()))
        .await
        .unwrap();
    ws_read_until(&mut ws, &mut received, "/dev/pts/").await;
    ws.send(Message::Text(
        json!({"type": "resize", "rows": 40, "cols": 120})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(b"stty size\n".to_vec().into()))
        .await
        .unwrap();
    ws_read_until(&mut ws, &mut received, "40 120").await;
    ws.send(Message::Binary(b"sleep 100; echo never\n".to_vec().into()))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = exec(&s, &id, "pgrep -x sleep || true").await;
        if !out["stdout"].as_str().unwrap().trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sleep never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.send(Message::Binary(vec![3u8].into())).await.unwrap();
    ws.send(Message::Binary(b"echo ws-$((6*7)); exit\n".to_vec().into()))
        .await
        .unwrap();
    ws_read_until(&mut ws, &mut received, "ws-42").await;
    // The shell exits: the server says how, then closes.
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .expect("exit message")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "exit" {
                break v;
            }
        }
    };
    assert_eq!(exit["exit_code"], 0, "{exit}");
    assert!(!received.contains("\nnever"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_survives_pause_and_resume_and_goes_with_the_sandbox() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    let pid = start(
        &s,
        &id,
        json!({"command": "i=0; while true; do echo n$i; i=$((i+1)); sleep 0.1; done", "stdin": false}),
    )
    .await;
    let (mut cursor, mut seen) = (0u64, String::new());
    poll_until(&s, &id, pid, &mut cursor, &mut seen, "n3\n").await;
    let (st, p) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!((st, p["status"].as_str()), (StatusCode::OK, Some("paused")));
    let (st, r) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(
        (st, r["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{r}"
    );
    // The same cursor goes on: every number in sequence, none lost.
    let before = seen.lines().count();
    let target = format!("n{}\n", before + 5);
    poll_until(&s, &id, pid, &mut cursor, &mut seen, &target).await;
    for (i, line) in seen.lines().enumerate() {
        assert_eq!(line, format!("n{i}"), "output broken at line {i}: {seen}");
    }
    assert_eq!(status(&s, &id, pid).await["status"], "running");
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes/{pid}"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_exec_and_large_exec_output() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    let resp = s
        .req(M::POST, &format!("/sandboxes/{id}/exec"))
        .json(&json!({"command": "echo one; echo two >&2; exit 4", "stream": true}))
        .send()
        .await
        .unwrap();
    let lines = ndjson(resp).await;
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"start"), "{lines:?}");
    assert_eq!(types.last(), Some(&"end"), "{lines:?}");
    let text = |t: &str| -> String {
        lines
            .iter()
            .filter(|l| l["type"] == t)
            .map(|l| l["data"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(text("stdout"), "one\n");
    assert_eq!(text("stderr"), "two\n");
    assert_eq!(lines.last().unwrap()["exit_code"], 4);
    // Output larger than a protocol frame (10 MiB) arrives whole.
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "head -c 12000000 /dev/zero | tr '\\0' x",
                        "max_output_bytes": 16_000_000, "timeout_ms": 120_000})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(out["stdout"].as_str().unwrap().len(), 12_000_000);
    assert_eq!(out["truncated"], false);
    // Exec'd commands do not stay in the process table.
    let (_, list) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes"), None)
        .await;
    assert_eq!(list["processes"].as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_processes_and_bad_requests_in_one_sandbox() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let id = create(&s).await;
    // 100 background processes at once, each printing its own marker.
    let starts = (0..100).map(|i| {
        let (s, id) = (&s, &id);
        async move {
            start(
                s,
                id,
                json!({"command": format!("echo marker-{i}; sleep 2; echo done-{i}"), "stdin": false}),
            )
            .await
        }
    });
    let pids: Vec<u64> = futures::future::join_all(starts).await;
    for (i, pid) in pids.iter().enumerate() {
        let info = wait_exited(&s, &id, *pid).await;
        assert_eq!(info["exit_code"], 0, "{info}");
        let (_, out) = s
            .call(
                M::GET,
                &format!("/sandboxes/{id}/processes/{pid}/output"),
                None,
            )
            .await;
        assert_eq!(out["stdout"], format!("marker-{i}\ndone-{i}\n"), "{out}");
    }
    // Bad requests, while a survivor runs.
    let survivor = start(&s, &id, json!({"command": "cat"})).await;
    let expect = |st: StatusCode, want: StatusCode, body: &Value| {
        assert_eq!(st, want, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    };
    let (st, e) = s
        .call(M::GET, &format!("/sandboxes/{id}/processes/4000000"), None)
        .await;
    expect(st, StatusCode::NOT_FOUND, &e);
    let big = "x".repeat(1024 * 1024 + 1);
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{survivor}/stdin"),
            Some(json!({"data": big})),
        )
        .await;
    expect(st, StatusCode::PAYLOAD_TOO_LARGE, &e);
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{survivor}/signal"),
            Some(json!({"signal": "SIGNOPE"})),
        )
        .await;
    expect(st, StatusCode::BAD_REQUEST, &e);
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({"command": "true", "cwd": "/no/where"})),
        )
        .await;
    expect(st, StatusCode::BAD_REQUEST, &e);
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{survivor}/stdin"),
            Some(json!({"data": "bye\n", "close": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let info = wait_exited(&s, &id, survivor).await;
    assert_eq!(info["exit_code"], 0);
    let (st, e) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes/{survivor}/stdin"),
            Some(json!({"data": "more"})),
        )
        .await;
    expect(st, StatusCode::CONFLICT, &e);
    let (_, out) = s
        .call(
            M::GET,
            &format!("/sandboxes/{id}/processes/{survivor}/output"),
            None,
        )
        .await;
    assert_eq!(out["stdout"], "bye\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_sandboxes_streaming_at_once() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 10).await;
    let ids = futures::future::join_all((0..10).map(|_| create(&s))).await;
    let runs = ids.iter().enumerate().map(|(n, id)| {
        let s = &s;
        async move {
            let resp = s
                .req(M::POST, &format!("/sandboxes/{id}/exec"))
                .json(&json!({"command": format!("seq 1 20000 | sed s/^/{n}-/"), "stream": true}))
                .send()
                .await
                .unwrap();
            let lines = ndjson(resp).await;
            let out: String = lines
                .iter()
                .filter(|l| l["type"] == "stdout")
                .map(|l| l["data"].as_str().unwrap().to_owned())
                .collect();
            let want: String = (1..=20000).map(|i| format!("{n}-{i}\n")).collect();
            assert_eq!(out.len(), want.len(), "sandbox {n}");
            assert!(out == want, "sandbox {n}: bytes differ");
            assert_eq!(lines.last().unwrap()["exit_code"], 0);
        }
    });
    futures::future::join_all(runs).await;
}
