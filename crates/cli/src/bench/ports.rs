//! Exposed ports: connection setup through a port's own listener (connect
//! until the first answer byte) and bulk TCP throughput both ways, against
//! a small TCP server in the guest (Python standard library).

use super::api::{ms_since, Api};
use super::{err_note, join_notes, Metric, OP_TIMEOUT};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// The guest port the bench server listens on.
const GUEST_PORT: u16 = 7077;
/// Bytes moved each way for the throughput figures.
const BULK_BYTES: u64 = 32 * 1024 * 1024;
/// How long one connection or transfer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// One command per connection: `ping` answers `pong`; `send N` sends N
/// bytes and closes; `recv N` reads N bytes and answers `ok`.
const SERVER: &str = r#"
import socket, socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        cmd = self.rfile.readline().split()
        if not cmd:
            return
        if cmd[0] == b"ping":
            self.wfile.write(b"pong\n")
        elif cmd[0] == b"send":
            left, block = int(cmd[1]), b"x" * 65536
            while left > 0:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
        elif cmd[0] == b"recv":
            left = int(cmd[1])
            while left > 0:
                d = self.rfile.read(min(left, 65536))
                if not d:
                    return
                left -= len(d)
            self.wfile.write(b"ok\n")
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(("127.0.0.1", PORT), H).serve_forever()
"#;

async fn ping(addr: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"ping\n").await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    anyhow::ensure!(line == "pong\n", "the guest server answered {line:?}");
    Ok(())
}

async fn guest_to_host(addr: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("send {BULK_BYTES}\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    anyhow::ensure!(got == BULK_BYTES, "received {got} of {BULK_BYTES} bytes");
    Ok(BULK_BYTES as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64())
}

async fn host_to_guest(addr: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("recv {BULK_BYTES}\n").as_bytes())
        .await?;
    let block = vec![b'y'; 1 << 16];
    let mut left = BULK_BYTES;
    while left > 0 {
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        s.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    anyhow::ensure!(line == "ok\n", "the guest server answered {line:?}");
    Ok(BULK_BYTES as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64())
}

/// Starts the guest server, exposes its port and waits until it answers;
/// the `host:port` of the port's listener.
async fn setup(api: &Api, id: &str) -> anyhow::Result<(String, u64)> {
    let script = SERVER.replace("PORT", &GUEST_PORT.to_string());
    let started = api
        .post(
            &format!("/sandboxes/{id}/processes"),
            &json!({"argv": ["python3", "-c", script], "stdin": false}),
            OP_TIMEOUT,
        )
        .await?;
    let pid = started.body["pid"].as_u64().unwrap_or_default();
    let exposed = api
        .post(
            &format!("/sandboxes/{id}/ports/expose"),
            &json!({ "port": GUEST_PORT }),
            OP_TIMEOUT,
        )
        .await?;
    let host_port = exposed.body["host_port"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("expose answered {}", exposed.body))?;
    let addr = format!("127.0.0.1:{host_port}");
    // Until the guest's server listens, a connection is closed at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(IO_TIMEOUT, ping(&addr)).await {
            Ok(Ok(())) => return Ok((addr, pid)),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Err(e)) => return Err(e.context("the guest's bench server never answered")),
            Err(_) => anyhow::bail!("the guest's bench server never answered"),
        }
    }
}

/// The exposed-port figures for the working sandbox `id`.
pub async fn metrics(api: &Api, id: &str, ops: usize) -> Vec<Metric> {
    eprintln!(
        "bench: exposed port (connect x{ops}, {} MiB each way)",
        BULK_BYTES >> 20
    );
    let names = [
        "port.connect",
        "port.throughput.guest_to_host",
        "port.throughput.host_to_guest",
    ];
    let (addr, pid) = match setup(api, id).await {
        Ok(v) => v,
        Err(e) => {
            let note = Some(format!("no exposed port: {}", err_note(&e)));
            return names
                .iter()
                .zip(["ms", "MiB/s", "MiB/s"])
                .map(|(n, u)| Metric::new(n, u, &[], note.clone()))
                .collect();
        }
    };
    let (mut connect, mut errs) = (Vec::new(), Vec::new());
    for _ in 0..ops {
        let t = Instant::now();
        match tokio::time::timeout(IO_TIMEOUT, ping(&addr)).await {
            Ok(Ok(())) => connect.push(ms_since(t)),
            Ok(Err(e)) => errs.push(err_note(&e)),
            Err(_) => errs.push("timed out".into()),
        }
    }
    errs.dedup();
    let mut m = vec![Metric::new(
        names[0],
        "ms",
        &connect,
        join_notes(&errs).or(Some(
            "TCP connect to the port's listener until the guest's first answer line (a new agent-channel stream each time)".into(),
        )),
    )];
    for (name, run) in [
        (names[1], guest_to_host(&addr).await),
        (names[2], host_to_guest(&addr).await),
    ] {
        m.push(Metric::new(
            name,
            "MiB/s",
            run.as_ref()
                .map(|v| vec![*v])
                .unwrap_or_default()
                .as_slice(),
            Some(match &run {
                Ok(_) => format!(
                    "{} MiB over one connection through the exposed port",
                    BULK_BYTES >> 20
                ),
                Err(e) => err_note(e),
            }),
        ));
    }
    let _ = api
        .delete(&format!("/sandboxes/{id}/ports/{GUEST_PORT}"), OP_TIMEOUT)
        .await;
    let _ = api
        .delete(&format!("/sandboxes/{id}/processes/{pid}"), OP_TIMEOUT)
        .await;
    m
}
