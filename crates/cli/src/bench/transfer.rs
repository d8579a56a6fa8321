//! File throughput through the API: 64 MiB up and down through the raw
//! streaming endpoints (`PUT`/`GET files/content`) and through the JSON
//! ones (`files/write`, `files/read`, base64), each checked against the
//! SHA-256 of what was sent.

use super::api::Api;
use super::{err_note, join_notes, Metric, OP_TIMEOUT};
use base64::Engine as _;
use rand::RngCore as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

/// Bytes moved per sample.
const BYTES: usize = 64 * 1024 * 1024;

/// How long one 64 MiB transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn mib_per_sec(start: Instant) -> f64 {
    BYTES as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

/// The four directions, `runs` samples each.
pub async fn metrics(api: &Api, id: &str, runs: usize) -> Vec<Metric> {
    let mut data = vec![0u8; BYTES];
    rand::thread_rng().fill_bytes(&mut data);
    let sha = hex(&Sha256::digest(&data));
    let raw_path = "/workspace/bench-64MiB.raw";
    let json_path = "/workspace/bench-64MiB.json";
    let mut out = Vec::new();
    let mut record = |name: &str, samples: &[f64], errs: &mut Vec<String>, how: &str| {
        errs.dedup();
        out.push(Metric::new(
            name,
            "MiB/s",
            samples,
            join_notes(errs).or(Some(how.to_owned())),
        ));
    };
    eprintln!("bench: 64 MiB transfers x{runs}");

    let (mut up, mut down, mut errs_up, mut errs_down) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        match put_raw(api, id, raw_path, &data, &sha).await {
            Ok(v) => up.push(v),
            Err(e) => errs_up.push(err_note(&e)),
        }
        match get_raw(api, id, raw_path, &sha).await {
            Ok(v) => down.push(v),
            Err(e) => errs_down.push(err_note(&e)),
        }
    }
    record(
        "files.upload.stream.64MiB",
        &up,
        &mut errs_up,
        "PUT files/content, raw body with X-Content-SHA256",
    );
    record(
        "files.download.stream.64MiB",
        &down,
        &mut errs_down,
        "GET files/content, raw body, SHA-256 checked",
    );

    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let body = json!({"path": json_path, "content": encoded});
    drop(encoded);
    let (mut up, mut down, mut errs_up, mut errs_down) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let start = Instant::now();
        match api
            .post(
                &format!("/sandboxes/{id}/files/write"),
                &body,
                TRANSFER_TIMEOUT,
            )
            .await
        {
            Ok(t) if t.body["sha256"] == sha.as_str() => up.push(mib_per_sec(start)),
            Ok(t) => errs_up.push(format!("wrong sha256 written: {}", t.body["sha256"])),
            Err(e) => errs_up.push(err_note(&e)),
        }
        let start = Instant::now();
        match api
            .call(
                Method::GET,
                &format!("/sandboxes/{id}/files/read?path={json_path}"),
                None,
                TRANSFER_TIMEOUT,
            )
            .await
        {
            Ok(t) => {
                let got = t
                    .body
                    .get("content")
                    .and_then(Value::as_str)
                    .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok());
                match got {
                    Some(d) if hex(&Sha256::digest(&d)) == sha => down.push(mib_per_sec(start)),
                    _ => errs_down.push("read returned different bytes".into()),
                }
            }
            Err(e) => errs_down.push(err_note(&e)),
        }
    }
    record(
        "files.upload.json.64MiB",
        &up,
        &mut errs_up,
        "POST files/write, base64 JSON (needs max_body_bytes above 86 MiB)",
    );
    record(
        "files.download.json.64MiB",
        &down,
        &mut errs_down,
        "GET files/read, base64 JSON, decoded and checked",
    );
    for p in [raw_path, json_path] {
        let _ = api
            .delete(&format!("/sandboxes/{id}/files?path={p}"), OP_TIMEOUT)
            .await;
    }
    out
}

async fn put_raw(api: &Api, id: &str, path: &str, data: &[u8], sha: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = api
        .raw(
            Method::PUT,
            &format!("/sandboxes/{id}/files/content?path={path}"),
            TRANSFER_TIMEOUT,
        )
        .header("X-Content-SHA256", sha)
        .body(data.to_vec())
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status.is_success(),
        "PUT files/content: HTTP {status}: {body}"
    );
    anyhow::ensure!(
        body["sha256"] == sha,
        "PUT files/content wrote {}",
        body["sha256"]
    );
    Ok(mib_per_sec(start))
}

async fn get_raw(api: &Api, id: &str, path: &str, sha: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut resp = api
        .open(
            Method::GET,
            &format!("/sandboxes/{id}/files/content?path={path}"),
            None,
            TRANSFER_TIMEOUT,
        )
        .await?;
    let mut hasher = Sha256::new();
    let mut n = 0usize;
    while let Some(chunk) = resp.chunk().await? {
        n += chunk.len();
        hasher.update(&chunk);
    }
    anyhow::ensure!(n == BYTES, "GET files/content gave {n} bytes");
    anyhow::ensure!(
        hex(&hasher.finalize()) == sha,
        "GET files/content gave other bytes"
    );
    Ok(mib_per_sec(start))
}
