//! End-to-end: exposed ports against real guests. A web server and a
//! WebSocket echo server started in the guest are reached from the host
//! through the port's own listener and through Host-header routing on the
//! API server; closing, pause/resume and destroy do what they say.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// A WebSocket echo server on 127.0.0.1:8001, Python standard library
/// only (the image has no WebSocket package).
const WS_ECHO: &str = r#"
import base64, hashlib, socket, struct, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b
def serve(c):
    h = b""
    while b"\r\n\r\n" not in h:
        d = c.recv(4096)
        if not d:
            return
        h += d
    key = [l.split(b":", 1)[1].strip() for l in h.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        b0, b1 = exact(c, 2)
        op, n = b0 & 15, b1 & 127
        if n == 126:
            n = struct.unpack(">H", exact(c, 2))[0]
        mask = exact(c, 4)
        data = bytes(x ^ mask[i % 4] for i, x in enumerate(exact(c, n)))
        if op == 8:
            c.sendall(b"\x88\x00")
            return
        head = bytes([0x80 | op]) + (bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n))
        c.sendall(head + data)
def guarded(c):
    try:
        serve(c)
    except Exception:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8001))
s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=guarded, args=(c,), daemon=True).start()
"#;

async fn start(s: &Server, id: &str, command: &str) {
    let (st, info) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/processes"),
            Some(json!({ "command": command })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{info}");
}

/// Waits in the guest (bounded, 50 s) until something accepts on `port`.
async fn listening(s: &Server, id: &str, port: u16) {
    let probe = format!(
        "for i in $(seq 500); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    );
    s.exec_ok(id, &format!("bash -c '{probe}'")).await;
}

async fn expose(s: &Server, id: &str, port: u16) -> Value {
    let (st, p) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/ports/expose"),
            Some(json!({ "port": port })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    p
}

/// GET `url` (an exposed port's) and its body.
async fn get(url: &str) -> (StatusCode, String) {
    let r = tokio::time::timeout(WAIT, reqwest::get(url))
        .await
        .unwrap()
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// GET `path` on the API server with `Host: host`.
async fn get_routed(s: &Server, host: &str, path: &str) -> (StatusCode, String) {
    let r = tokio::time::timeout(
        WAIT,
        s.http
            .get(format!("{}{path}", s.url))
            .header("host", host)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Opens a WebSocket at `url` (with `Host: host` when given), sends a
/// text and answers what comes back.
async fn ws_echo(url: &str, host: Option<&str>, text: &str) -> String {
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    if let Some(h) = host {
        req.headers_mut().insert("host", h.parse().unwrap());
    }
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::Text(text.to_owned().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = ws.close(None).await;
    answer.into_text().unwrap().to_string()
}

fn host_port(p: &Value) -> u16 {
    u16::try_from(p["host_port"].as_u64().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_ports_carry_http_and_websockets_through_both_ways_in() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let (st, sb) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::OK, "{sb}");
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();

    // A web server and a WebSocket echo server in the guest.
    s.exec_ok(
        &id,
        "mkdir -p /tmp/www && echo \"hello from $(hostname)\" > /tmp/www/hello.txt",
    )
    .await;
    let (st, _) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/files/write"),
            Some(json!({"path": "/tmp/ws.py", "content": WS_ECHO, "encoding": "utf-8"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    start(
        &s,
        &id,
        "cd /tmp/www && exec python3 -m http.server 8000 --bind 127.0.0.1",
    )
    .await;
    start(&s, &id, "exec python3 /tmp/ws.py").await;
    listening(&s, &id, 8000).await;
    listening(&s, &id, 8001).await;

    // Expose: the URL answers from the host; again: the same answer.
    let web = expose(&s, &id, 8000).await;
    assert_eq!(web["already_exposed"], false, "{web}");
    let url = web["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("http://127.0.0.1:{}/", host_port(&web)));
    let expected = format!("hello from {id}\n");
    assert_eq!(
        get(&format!("{url}hello.txt")).await,
        (StatusCode::OK, expected.clone())
    );
    let again = expose(&s, &id, 8000).await;
    assert_eq!(again["already_exposed"], true);
    assert_eq!(again["url"], web["url"]);

    // Host-header routing through the API server, no API key.
    let route = web["route_host"].as_str().unwrap().to_owned();
    assert_eq!(route, format!("8000-{id}.localhost"));
    let server_port = s.url.rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        get_routed(&s, &format!("{route}:{server_port}"), "/hello.txt").await,
        (StatusCode::OK, expected.clone())
    );
    // A port that is not exposed is a 404 that says what to do.
    let (st, body) = get_routed(&s, &format!("9000-{id}.localhost"), "/").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("ports/expose"), "{body}");

    // WebSocket through both ways in.
    let ws = expose(&s, &id, 8001).await;
    let ws_url = format!("ws://127.0.0.1:{}/", host_port(&ws));
    assert_eq!(ws_echo(&ws_url, None, "ping-direct").await, "ping-direct");
    let api_ws = format!("{}/", s.url.replacen("http://", "ws://", 1));
    let ws_route = ws["route_host"].as_str().unwrap().to_owned();
    assert_eq!(
        ws_echo(&api_ws, Some(&ws_route), "ping-routed").await,
        "ping-routed"
    );

    // A port where nothing listens: exposed, but requests get a 502 that
    // says so.
    let idle = expose(&s, &id, 8002).await;
    let (st, body) = get_routed(&s, idle["route_host"].as_str().unwrap(), "/").await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("nothing listens on port 8002"), "{body}");

    // The list holds all three, by port.
    let (st, list) = s
        .call(M::GET, &format!("/sandboxes/{id}/ports"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let ports: Vec<u64> = list["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8000, 8001, 8002]);

    // Pause and resume: the same URL answers again (the guest's servers
    // kept running in its memory).
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        get(&format!("{url}hello.txt")).await,
        (StatusCode::OK, expected)
    );
    assert_eq!(ws_echo(&ws_url, None, "after-resume").await, "after-resume");

    // Close: the next connection is refused, the route is a 404, closing
    // again is a 404.
    let (st, _) = s
        .call(M::DELETE, &format!("/sandboxes/{id}/ports/8000"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", host_port(&web))).await;
    assert!(refused.is_err(), "the closed port still accepts");
    let (st, _) = get_routed(&s, &route, "/hello.txt").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call(M::DELETE, &format!("/sandboxes/{id}/ports/8000"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Destroy: every listener of the sandbox is gone.
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert!(st.is_success(), "{st}");
    for p in [&ws, &idle] {
        let refused = tokio::net::TcpStream::connect(("127.0.0.1", host_port(p))).await;
        assert!(
            refused.is_err(),
            "port {} still accepts after destroy",
            p["port"]
        );
    }
    let (st, _) = s
        .call(M::GET, &format!("/sandboxes/{id}/ports"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// GET `url` with `headers` (host, token).
async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut r = reqwest::Client::new().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = tokio::time::timeout(WAIT, r.send()).await.unwrap().unwrap();
    (r.status(), r.text().await.unwrap())
}

/// A port exposed with `require_token` answers only requests that carry
/// its token, both through its listener and through Host-header routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_port_needs_its_access_token_both_ways_in() {
    let Some(image) = image_dir() else { return };
    let s = Server::start(&image, 2).await;
    let (st, sb) = s
        .call(M::POST, "/sandboxes", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(st, StatusCode::OK, "{sb}");
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();
    s.exec_ok(
        &id,
        "mkdir -p /tmp/www && echo secret-page > /tmp/www/p.txt",
    )
    .await;
    start(
        &s,
        &id,
        "cd /tmp/www && exec python3 -m http.server 8000 --bind 127.0.0.1",
    )
    .await;
    listening(&s, &id, 8000).await;
    let (st, p) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/ports/expose"),
            Some(json!({"port": 8000, "require_token": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{p}");
    let token = p["access_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64, "{p}");
    let page = format!("{}p.txt", p["url"].as_str().unwrap());
    let host = p["route_host"].as_str().unwrap().to_owned();
    let routed = format!("{}/p.txt", s.url);

    // The port's own listener.
    let (st, body) = get_with(&page, &[]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("e2b-traffic-access-token"), "{body}");
    let (st, _) = get_with(&page, &[("e2b-traffic-access-token", "wrong")]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, body) = get_with(&page, &[("e2b-traffic-access-token", &token)]).await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "secret-page\n"));
    // Host-header routing through the API server.
    let (st, body) = get_with(&routed, &[("host", &host)]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, body) = get_with(
        &routed,
        &[("host", &host), ("e2b-traffic-access-token", &token)],
    )
    .await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "secret-page\n"));

    // The token is listed with the port; exposing it again without
    // require_token is refused rather than silently opening it.
    let (_, list) = s
        .call(M::GET, &format!("/sandboxes/{id}/ports"), None)
        .await;
    assert_eq!(list["ports"][0]["access_token"], token.as_str(), "{list}");
    let (st, again) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/ports/expose"),
            Some(json!({"port": 8000})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{again}");
    let (st, _) = s.call(M::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
}
