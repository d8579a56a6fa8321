//! Live output through the API: time to the first output byte of a
//! streamed `echo`, streamed output throughput, and the stdin → output echo
//! round trip of a background `cat` against the same echo inside the guest.

use super::api::{ms_since, Api};
use super::{err_note, join_notes, Metric, OP_TIMEOUT};
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Bytes streamed for the throughput figure.
const THROUGHPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Reads NDJSON lines from a streaming response.
struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next line as JSON; `None` at the end of the body.
    async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// Milliseconds from sending a streamed `echo` to its first stdout line.
async fn first_byte(api: &Api, id: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = api
        .open(
            Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(&json!({"command": "echo first", "stream": true})),
            OP_TIMEOUT,
        )
        .await?;
    let mut lines = Lines::new(resp);
    let mut first = None;
    while let Some(line) = lines.next().await? {
        if first.is_none() && line["type"] == "stdout" {
            first = Some(ms_since(start));
        }
    }
    first.ok_or_else(|| anyhow::anyhow!("the streamed echo printed nothing"))
}

/// MiB/s of a process's output streamed through `…/stream` (base64 NDJSON).
async fn throughput(api: &Api, id: &str) -> anyhow::Result<f64> {
    let started = api
        .post(
            &format!("/sandboxes/{id}/processes"),
            &json!({"command": format!("head -c {THROUGHPUT_BYTES} /dev/zero"), "stdin": false}),
            OP_TIMEOUT,
        )
        .await?;
    let pid = started.body["pid"].as_u64().unwrap_or_default();
    let start = Instant::now();
    let resp = api
        .open(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}/stream?cursor=0&encoding=base64"),
            None,
            Duration::from_secs(300),
        )
        .await?;
    let mut lines = Lines::new(resp);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = 0u64;
    while let Some(line) = lines.next().await? {
        match line["type"].as_str() {
            Some("stdout") => {
                bytes += b64
                    .decode(line["data"].as_str().unwrap_or_default())
                    .map(|d| d.len() as u64)?;
            }
            Some("dropped") => anyhow::bail!("the stream dropped bytes: {line}"),
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = api
        .delete(&format!("/sandboxes/{id}/processes/{pid}"), OP_TIMEOUT)
        .await;
    if bytes != THROUGHPUT_BYTES {
        anyhow::bail!("streamed {bytes} bytes, expected {THROUGHPUT_BYTES}");
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / secs)
}

/// Round trips of a line written to a background `cat`'s stdin until it
/// comes back on the stream, in ms.
async fn echo_round_trips(api: &Api, id: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let started = api
        .post(
            &format!("/sandboxes/{id}/processes"),
            &json!({"argv": ["cat"], "stdin": true}),
            OP_TIMEOUT,
        )
        .await?;
    let pid = started.body["pid"].as_u64().unwrap_or_default();
    let resp = api
        .open(
            Method::GET,
            &format!("/sandboxes/{id}/processes/{pid}/stream?cursor=0"),
            None,
            Duration::from_secs(300),
        )
        .await?;
    let mut lines = Lines::new(resp);
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        let want = format!("ping-{i}\n");
        let t = Instant::now();
        api.post(
            &format!("/sandboxes/{id}/processes/{pid}/stdin"),
            &json!({ "data": want }),
            OP_TIMEOUT,
        )
        .await?;
        let mut got = String::new();
        while got != want {
            let line = lines
                .next()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the cat stream ended"))?;
            if line["type"] == "stdout" {
                got.push_str(line["data"].as_str().unwrap_or_default());
            }
        }
        // The first round trip warms up the connections.
        if i > 0 {
            out.push(ms_since(t));
        }
    }
    let _ = api
        .delete(&format!("/sandboxes/{id}/processes/{pid}"), OP_TIMEOUT)
        .await;
    Ok(out)
}

/// The same echo inside the guest: a line through a pipe to `cat` and back,
/// timed by Python in the guest (median of 200, ms).
async fn guest_echo_ms(api: &Api, id: &str) -> anyhow::Result<f64> {
    let script = concat!(
        "import subprocess, time, statistics\n",
        "p = subprocess.Popen(['cat'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)\n",
        "t = []\n",
        "for i in range(201):\n",
        "    s = time.perf_counter()\n",
        "    p.stdin.write(b'ping\\n')\n",
        "    p.stdout.readline()\n",
        "    t.append(time.perf_counter() - s)\n",
        "print(statistics.median(t[1:]) * 1000)\n",
    );
    let r = api
        .post(
            &format!("/sandboxes/{id}/exec"),
            &json!({"command": "python3 -", "stdin": script, "timeout_ms": 120_000}),
            Duration::from_secs(180),
        )
        .await?;
    r.body["stdout"]
        .as_str()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("guest echo baseline printed {}", r.body))
}

/// Every live-output figure for the working sandbox `id`.
pub async fn metrics(api: &Api, id: &str, ops: usize) -> Vec<Metric> {
    eprintln!("bench: streamed output (first byte x{ops}, throughput, stdin echo x{ops})");
    let (mut first, mut errs) = (Vec::new(), Vec::new());
    let _ = first_byte(api, id).await; // warm-up
    for _ in 0..ops {
        match first_byte(api, id).await {
            Ok(ms) => first.push(ms),
            Err(e) => errs.push(err_note(&e)),
        }
    }
    errs.dedup();
    let mut m = vec![Metric::new(
        "stream.first_byte.echo",
        "ms",
        &first,
        join_notes(&errs).or(Some(
            "POST /exec {stream: true} `echo` until its first stdout line".into(),
        )),
    )];
    let tp = throughput(api, id).await;
    m.push(Metric::new(
        "stream.throughput",
        "MiB/s",
        tp.as_ref().map(|v| vec![*v]).unwrap_or_default().as_slice(),
        Some(match &tp {
            Ok(_) => format!(
                "{} MiB of `head -c` through GET …/stream (base64 NDJSON), decoded by the bench",
                THROUGHPUT_BYTES >> 20
            ),
            Err(e) => err_note(e),
        }),
    ));
    let rtt = echo_round_trips(api, id, ops).await;
    let guest = guest_echo_ms(api, id).await;
    let samples = rtt.as_ref().cloned().unwrap_or_default();
    m.push(Metric::new(
        "stdin.echo.round_trip",
        "ms",
        &samples,
        Some(match &rtt {
            Ok(_) => {
                "POST …/stdin of a line to a background `cat` until it is back on …/stream".into()
            }
            Err(e) => err_note(e),
        }),
    ));
    let over: Vec<f64> = match &guest {
        Ok(g) => samples.iter().map(|s| s - g).collect(),
        Err(_) => Vec::new(),
    };
    m.push(Metric::new(
        "stdin.echo.guest_baseline",
        "ms",
        guest
            .as_ref()
            .map(|g| vec![*g])
            .unwrap_or_default()
            .as_slice(),
        Some(match &guest {
            Ok(_) => {
                "the same echo through a pipe to `cat` inside the guest (python3, median of 200)"
                    .into()
            }
            Err(e) => err_note(e),
        }),
    ));
    m.push(Metric::new(
        "stdin.echo.overhead",
        "ms",
        &over,
        Some("round trip minus the in-guest baseline".into()),
    ));
    m
}
