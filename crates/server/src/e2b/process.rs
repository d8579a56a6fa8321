//! envd's `process.Process` service over the manager's process operations:
//! Start, Connect, List, SendInput, StreamInput, SendSignal, CloseStdin and
//! Update (PTY resize). Messages are the proto3 JSON of E2B's
//! `process.proto` (lowerCamelCase names; snake_case accepted too).

use super::connect::{self, Code, Envelopes, RpcError};
use super::envd::Envd;
use super::pump::Pump;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::StreamExt;
use locale2b_manager::{
    OutputEvent, OutputStream, ProcessExit, ProcessInfo, ProcessSelector, ProcessSpec,
    ProcessState, PtySize,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Environment variables every E2B process gets (besides the sandbox's).
pub const SANDBOX_ID_ENV: &str = "E2B_SANDBOX_ID";

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(default)]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    cols: u32,
    rows: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// `{"pid": N}` or `{"tag": "t"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    pid: Option<u32>,
    tag: Option<String>,
}

impl Selector {
    fn get(s: Option<Self>) -> Result<ProcessSelector, RpcError> {
        match s {
            Some(Self { pid: Some(pid), .. }) => Ok(ProcessSelector::Pid(pid)),
            Some(Self { tag: Some(t), .. }) => Ok(ProcessSelector::Tag(t)),
            _ => Err(RpcError::invalid(
                "process must select a process: {\"pid\": N} or {\"tag\": \"...\"}",
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SelectorRequest {
    process: Option<Selector>,
}

/// Bytes in proto3 JSON: standard base64 (URL-safe and unpadded accepted).
fn b64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        let trimmed = s.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .map_err(serde::de::Error::custom)
    })
    .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    #[serde(deserialize_with = "b64_bytes")]
    stdin: Option<Vec<u8>>,
    #[serde(deserialize_with = "b64_bytes")]
    pty: Option<Vec<u8>>,
}

impl Input {
    fn bytes(self) -> Result<Vec<u8>, RpcError> {
        self.stdin.or(self.pty).ok_or_else(|| {
            RpcError::new(Code::Unimplemented, "input must carry stdin or pty bytes")
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputMessage {
    start: Option<SelectorRequest>,
    data: Option<DataMessage>,
    keepalive: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DataMessage {
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Option<Selector>,
    pty: Option<Pty>,
}

/// The `end` event of a process that ended as `exit` says (envd's fields:
/// the exit code, -1 after a signal; `exited`; Go's status text; `error` for
/// anything but a clean exit).
pub fn end_event(exit: Option<&ProcessExit>) -> Value {
    let Some(exit) = exit else {
        return json!({"exitCode": -1, "exited": false, "status": "unknown", "error": "the process ended without an exit status"});
    };
    match (exit.exit_code, exit.signal) {
        (Some(code), _) => {
            let status = format!("exit status {code}");
            let mut e = json!({"exitCode": code, "exited": true, "status": status});
            if code != 0 {
                e["error"] = Value::String(status);
            }
            e
        }
        (None, signal) => {
            let status = format!("signal: {}", signal_name(signal.unwrap_or(0)));
            json!({"exitCode": -1, "exited": false, "status": status, "error": status})
        }
    }
}

/// Go's names of the signals that commonly end processes.
fn signal_name(sig: i32) -> String {
    match sig {
        1 => "hangup".into(),
        2 => "interrupt".into(),
        3 => "quit".into(),
        6 => "aborted".into(),
        9 => "killed".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        15 => "terminated".into(),
        n => format!("signal {n}"),
    }
}

fn event(e: Value) -> Value {
    json!({"event": e})
}

fn data_event(chunk: &locale2b_manager::OutputChunk) -> Value {
    let key = match chunk.stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
        _ => "pty",
    };
    event(json!({"data": {key: B64.encode(&chunk.data)}}))
}

/// Streams a process's events (`start`, `data`, `keepalive`, `end`) from
/// `events` until it ended.
fn follow(
    envd: &Envd,
    headers: &HeaderMap,
    pid: u32,
    events: locale2b_manager::OutputEvents,
) -> Response {
    let keepalive = connect::keepalive(headers);
    let sandbox_id = envd.info.sandbox_id.clone();
    let pump = Pump::spawn(
        keepalive,
        event(json!({"keepalive": {}})),
        move |tx| async move {
            tx.message(&event(json!({"start": {"pid": pid}}))).await?;
            let mut events = events;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(OutputEvent::Data(chunk)) => tx.message(&data_event(&chunk)).await?,
                    Ok(OutputEvent::Dropped { bytes, .. }) => {
                        // envd has no way to say this; at least the log does.
                        tracing::warn!(sandbox_id = %sandbox_id, pid, bytes, "a slow E2B stream missed output");
                    }
                    Ok(OutputEvent::Started { .. } | OutputEvent::Keepalive) => {}
                    Ok(OutputEvent::End { exit, .. }) => {
                        tx.message(&event(json!({"end": end_event(exit.as_ref())})))
                            .await?;
                        return Ok(Ok(()));
                    }
                    Err(e) => return Ok(Err(RpcError::from(e))),
                }
            }
            Ok(Err(RpcError::new(
                Code::Unavailable,
                format!("the sandbox stopped streaming process {pid} before it ended"),
            )))
        },
    );
    connect::stream_response(pump)
}

/// `POST /process.Process/{method}`.
pub async fn call(
    State(state): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let envd = match Envd::from_headers(&state, &headers).await {
        Ok(e) => e,
        Err(r) => return refuse(&headers, r.rpc()),
    };
    match method.as_str() {
        "Start" => start(&envd, &headers, body).await,
        "Connect" => connect_to(&envd, &headers, body).await,
        "StreamInput" => stream_input(&envd, &headers, body).await,
        "List" | "SendInput" | "SendSignal" | "CloseStdin" | "Update" => {
            let bytes = match connect::unary_body(body).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let result = match method.as_str() {
                "List" => list(&envd, &headers, &bytes).await,
                "SendInput" => send_input(&envd, &headers, &bytes).await,
                "SendSignal" => send_signal(&envd, &headers, &bytes).await,
                "CloseStdin" => close_stdin(&envd, &headers, &bytes).await,
                _ => update(&envd, &headers, &bytes).await,
            };
            result.unwrap_or_else(|r| r)
        }
        other => RpcError::new(
            Code::Unimplemented,
            format!("process.Process has no method {other:?}"),
        )
        .into_response(),
    }
}

/// An error answered in the form the request expects (stream or unary).
pub fn refuse(headers: &HeaderMap, e: RpcError) -> Response {
    if connect::is_stream_request(headers) {
        connect::stream_error(e)
    } else {
        e.into_response()
    }
}

/// The first message of a server-stream request.
async fn first<T: for<'de> Deserialize<'de> + Default>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Response> {
    let mut env = Envelopes::open(headers, body)?;
    match env.next::<T>().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Ok(T::default()),
        Err(e) => Err(connect::stream_error(e)),
    }
}

async fn start(envd: &Envd, headers: &HeaderMap, body: Body) -> Response {
    let req: StartRequest = match first(headers, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let spec = match spec_of(envd, headers, req) {
        Ok(s) => s,
        Err(e) => return connect::stream_error(e),
    };
    let info = match envd.guest.start_process(spec).await {
        Ok(i) => i,
        Err(e) => return connect::stream_error(e.into()),
    };
    let pid = info.pid;
    match envd
        .guest
        .follow_output(&ProcessSelector::Pid(pid), 0)
        .await
    {
        Ok(events) => follow(envd, headers, pid, events),
        Err(e) => connect::stream_error(e.into()),
    }
}

fn spec_of(envd: &Envd, headers: &HeaderMap, req: StartRequest) -> Result<ProcessSpec, RpcError> {
    let cfg = req
        .process
        .ok_or_else(|| RpcError::invalid("process (cmd, args, envs, cwd) is required"))?;
    if cfg.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd must name a program"));
    }
    let pty = match req.pty {
        Some(Pty { size: Some(s) }) => Some(PtySize {
            rows: u16::try_from(s.rows).unwrap_or(u16::MAX),
            cols: u16::try_from(s.cols).unwrap_or(u16::MAX),
        }),
        Some(Pty { size: None }) => Some(PtySize { rows: 24, cols: 80 }),
        None => None,
    };
    let mut env = BTreeMap::new();
    env.insert(SANDBOX_ID_ENV.to_owned(), envd.info.sandbox_id.to_string());
    env.extend(cfg.envs);
    let mut argv = vec![cfg.cmd];
    argv.extend(cfg.args);
    Ok(ProcessSpec {
        command: None,
        argv,
        cwd: Some(envd.resolve(cfg.cwd.as_deref().unwrap_or(""))?),
        env,
        user: Some(envd.user.clone()),
        // envd gives a stdin pipe unless told not to (ignored with a PTY).
        stdin: pty.is_none() && req.stdin.unwrap_or(true),
        pty,
        tag: req.tag,
        timeout: connect::timeout(headers)?,
        buffer_bytes: None,
    })
}

async fn connect_to(envd: &Envd, headers: &HeaderMap, body: Body) -> Response {
    let req: SelectorRequest = match first(headers, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let sel = match Selector::get(req.process) {
        Ok(s) => s,
        Err(e) => return connect::stream_error(e),
    };
    let info = match envd.guest.process(&sel).await {
        Ok(i) => i,
        Err(e) => return connect::stream_error(not_found_as_envd(e.into(), &sel)),
    };
    if let ProcessState::Exited(exit) = &info.state {
        let frames = [
            connect::message(&event(json!({"start": {"pid": info.pid}}))),
            connect::message(&event(json!({"end": end_event(Some(exit))}))),
            connect::end_ok(),
        ];
        return connect::stream_response(futures::stream::iter(frames));
    }
    // Like envd, a re-attached reader gets the output from now on.
    match envd.guest.follow_output(&sel, info.output_end).await {
        Ok(events) => follow(envd, headers, info.pid, events),
        Err(e) => connect::stream_error(e.into()),
    }
}

/// envd's message for an unknown process.
fn not_found_as_envd(e: RpcError, sel: &ProcessSelector) -> RpcError {
    if e.code != Code::NotFound {
        return e;
    }
    let what = match sel {
        ProcessSelector::Pid(pid) => format!("process with pid {pid} not found"),
        ProcessSelector::Tag(t) => format!("process with tag {t} not found"),
    };
    RpcError::new(Code::NotFound, what)
}

fn config_of(info: &ProcessInfo) -> ProcessConfig {
    let (cmd, args) = match (info.argv.split_first(), &info.command) {
        (Some((cmd, args)), _) => (cmd.clone(), args.to_vec()),
        (None, Some(c)) => ("/bin/sh".to_owned(), vec!["-c".to_owned(), c.clone()]),
        (None, None) => (String::new(), Vec::new()),
    };
    let mut envs = info.env.clone();
    envs.remove(SANDBOX_ID_ENV);
    ProcessConfig {
        cmd,
        args,
        envs,
        cwd: Some(info.cwd.clone()),
    }
}

async fn list(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let _: Value = connect::parse_unary(headers, body)?;
    let processes = envd
        .guest
        .list_processes()
        .await
        .map_err(|e| RpcError::from(e).into_response())?;
    let listed: Vec<Value> = processes
        .iter()
        .filter(|p| p.state == ProcessState::Running)
        .map(|p| {
            let mut v = json!({"config": config_of(p), "pid": p.pid});
            if let Some(t) = &p.tag {
                v["tag"] = Value::String(t.clone());
            }
            v
        })
        .collect();
    Ok(connect::unary(&json!({"processes": listed})))
}

async fn send_input(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: SendInputRequest = connect::parse_unary(headers, body)?;
    let sel = Selector::get(req.process).map_err(IntoResponse::into_response)?;
    let data = req
        .input
        .ok_or_else(|| RpcError::new(Code::Unimplemented, "input is required").into_response())?
        .bytes()
        .map_err(IntoResponse::into_response)?;
    envd.guest
        .write_stdin(&sel, data, false)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    Ok(connect::unary(&json!({})))
}

/// Client stream: `start` with the process, then `data` messages written
/// in order; answered (as a stream) once the client half-closes.
async fn stream_input(envd: &Envd, headers: &HeaderMap, body: Body) -> Response {
    let mut env = match Envelopes::open(headers, body) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let result = async {
        let first: StreamInputMessage = env
            .next()
            .await?
            .ok_or_else(|| RpcError::invalid("the input stream is empty; send start first"))?;
        let sel = Selector::get(first.start.and_then(|s| s.process)).map_err(|_| {
            RpcError::invalid("the first message of StreamInput must be start {process}")
        })?;
        envd.guest
            .process(&sel)
            .await
            .map_err(|e| not_found_as_envd(e.into(), &sel))?;
        while let Some(msg) = env.next::<StreamInputMessage>().await? {
            if let Some(data) = msg.data {
                let bytes = data
                    .input
                    .ok_or_else(|| RpcError::new(Code::Unimplemented, "data without input"))?
                    .bytes()?;
                envd.guest
                    .write_stdin(&sel, bytes, false)
                    .await
                    .map_err(|e| not_found_as_envd(e.into(), &sel))?;
            } else if msg.start.is_some() {
                return Err(RpcError::invalid("start may only be the first message"));
            }
            let _ = msg.keepalive;
        }
        Ok::<_, RpcError>(())
    }
    .await;
    let frames = match result {
        Ok(()) => vec![connect::message(&json!({})), connect::end_ok()],
        Err(e) => vec![e.end_frame()],
    };
    connect::stream_response(futures::stream::iter(frames))
}

async fn send_signal(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: SendSignalRequest = connect::parse_unary(headers, body)?;
    let sel = Selector::get(req.process).map_err(IntoResponse::into_response)?;
    let signal = match &req.signal {
        Value::String(s) if s == "SIGNAL_SIGKILL" => 9,
        Value::String(s) if s == "SIGNAL_SIGTERM" => 15,
        Value::Number(n) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
            n.as_i64().unwrap_or(0) as i32
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!(
                    "invalid signal: {other} (SIGNAL_SIGKILL and SIGNAL_SIGTERM are supported)"
                ),
            )
            .into_response())
        }
    };
    // An ended process is gone for envd: the SDK's kill() answers False.
    let info = envd
        .guest
        .process(&sel)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    if info.state != ProcessState::Running {
        return Err(not_found_as_envd(RpcError::new(Code::NotFound, ""), &sel).into_response());
    }
    envd.guest
        .signal(&sel, signal)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    Ok(connect::unary(&json!({})))
}

async fn close_stdin(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: SelectorRequest = connect::parse_unary(headers, body)?;
    let sel = Selector::get(req.process).map_err(IntoResponse::into_response)?;
    let info = envd
        .guest
        .process(&sel)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    if info.pty.is_some() {
        return Err(RpcError::new(
            Code::Unknown,
            "cannot close stdin for PTY process — send Ctrl+D (0x04) instead",
        )
        .into_response());
    }
    if info.stdin_open {
        envd.guest
            .write_stdin(&sel, Vec::new(), true)
            .await
            .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    }
    Ok(connect::unary(&json!({})))
}

async fn update(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: UpdateRequest = connect::parse_unary(headers, body)?;
    let sel = Selector::get(req.process).map_err(IntoResponse::into_response)?;
    let Some(Pty { size: Some(size) }) = req.pty else {
        return Ok(connect::unary(&json!({})));
    };
    let size = PtySize {
        rows: u16::try_from(size.rows).unwrap_or(u16::MAX),
        cols: u16::try_from(size.cols).unwrap_or(u16::MAX),
    };
    let info = envd
        .guest
        .process(&sel)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    if info.pty.is_none() {
        return Err(RpcError::new(
            Code::Internal,
            "error resizing tty: tty not assigned to process",
        )
        .into_response());
    }
    envd.guest
        .resize(&sel, size)
        .await
        .map_err(|e| not_found_as_envd(e.into(), &sel).into_response())?;
    Ok(connect::unary(&json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_read_like_envd() {
        let exit = |code: Option<i32>, signal: Option<i32>| ProcessExit {
            exit_code: code,
            signal,
            timed_out: false,
            duration_ms: 1,
        };
        let ok = end_event(Some(&exit(Some(0), None)));
        assert_eq!(
            ok,
            json!({"exitCode": 0, "exited": true, "status": "exit status 0"})
        );
        let failed = end_event(Some(&exit(Some(3), None)));
        assert_eq!(failed["error"], "exit status 3");
        let killed = end_event(Some(&exit(None, Some(9))));
        assert_eq!(
            killed,
            json!({"exitCode": -1, "exited": false, "status": "signal: killed", "error": "signal: killed"})
        );
    }

    #[test]
    fn messages_parse_from_the_sdk_json() {
        let req: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false}"#,
        )
        .unwrap();
        let p = req.process.unwrap();
        assert_eq!(
            (p.cmd.as_str(), p.args.len(), req.stdin),
            ("/bin/bash", 3, Some(false))
        );
        let input: SendInputRequest =
            serde_json::from_str(r#"{"process":{"pid":42},"input":{"stdin":"YWJj"}}"#).unwrap();
        assert_eq!(input.input.unwrap().bytes().unwrap(), b"abc");
        let sel: SelectorRequest = serde_json::from_str(r#"{"process":{"tag":"t"}}"#).unwrap();
        assert_eq!(
            Selector::get(sel.process).unwrap(),
            ProcessSelector::Tag("t".into())
        );
        let none: SelectorRequest = serde_json::from_str("{}").unwrap();
        assert!(Selector::get(none.process).is_err());
    }
}
