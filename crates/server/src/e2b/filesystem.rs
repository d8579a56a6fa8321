//! envd's `filesystem.Filesystem` service over the manager's file
//! operations: Stat, ListDir, MakeDir, Move, Remove, the WatchDir stream
//! and the polling watchers (CreateWatcher, GetWatcherEvents,
//! RemoveWatcher). Entries are E2B's `EntryInfo` in proto3 JSON.

use super::connect::{self, Code, Envelopes, RpcError};
use super::envd::Envd;
use super::pump::Pump;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use locale2b_manager::{FileInfo, FileKind, FsEvent, FsOp, GuestErrorKind, MakeDir, ManagerError};
use locale2b_protocol::SandboxId;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Unread events a polling watcher keeps before it fails (the client must
/// poll more often).
pub const MAX_WATCHER_EVENTS: usize = 100_000;
/// Polling watchers per sandbox.
pub const MAX_WATCHERS_PER_SANDBOX: usize = 64;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PathRequest {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ListDirRequest {
    path: String,
    depth: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveRequest {
    source: String,
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatchRequest {
    path: String,
    recursive: bool,
    #[serde(alias = "include_entry")]
    include_entry: bool,
    #[serde(alias = "allow_network_mounts")]
    allow_network_mounts: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatcherRequest {
    #[serde(alias = "watcher_id")]
    watcher_id: String,
}

/// Go's `FileMode.String()`: type letters, then `rwxrwxrwx`.
pub fn permissions(kind: FileKind, mode: u32) -> String {
    let mut s = String::new();
    match kind {
        FileKind::Directory => s.push('d'),
        FileKind::Symlink => s.push('L'),
        _ => {}
    }
    if mode & 0o4000 != 0 {
        s.push('u');
    }
    if mode & 0o2000 != 0 {
        s.push('g');
    }
    if mode & 0o1000 != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

fn file_type(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Directory => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// The directory part of an absolute path.
fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `EntryInfo` of `info`. For a symlink, like envd: the type and mode of
/// its target (stat'ed here), `symlinkTarget` the target's absolute path
/// and `isSymlink` set; a dangling link has type UNSPECIFIED.
async fn entry(envd: &Envd, info: &FileInfo) -> Value {
    let (kind, mode, size, target) = if info.kind == FileKind::Symlink {
        let raw = info.symlink_target.clone().unwrap_or_default();
        let abs = if raw.starts_with('/') {
            raw
        } else {
            format!("{}/{raw}", parent_of(&info.path))
        };
        match envd.guest.stat(&abs).await {
            Ok(t) => (t.kind, t.mode, t.size, Some(abs)),
            Err(_) => (FileKind::Other, info.mode, info.size, Some(abs)),
        }
    } else {
        (info.kind, info.mode, info.size, None)
    };
    let mut e = json!({
        "name": info.name,
        "type": file_type(kind),
        "path": info.path,
        "size": size.to_string(),
        "mode": mode & 0o777,
        "permissions": permissions(info.kind, mode),
        "owner": info.owner.clone().unwrap_or_default(),
        "group": info.group.clone().unwrap_or_default(),
    });
    if let Some(t) = rfc3339_ms(info.mtime_ms) {
        e["modifiedTime"] = Value::String(t);
    }
    if let Some(t) = target {
        e["symlinkTarget"] = Value::String(t);
        e["isSymlink"] = Value::Bool(true);
    }
    e
}

fn event_type(op: FsOp) -> &'static str {
    match op {
        FsOp::Create => "EVENT_TYPE_CREATE",
        FsOp::Write => "EVENT_TYPE_WRITE",
        FsOp::Remove => "EVENT_TYPE_REMOVE",
        FsOp::Rename => "EVENT_TYPE_RENAME",
        FsOp::Chmod => "EVENT_TYPE_CHMOD",
    }
}

/// A `FilesystemEvent`; with `include_entry`, the entry of what was
/// created, written or chmod'ed (when it still exists).
async fn fs_event(envd: &Envd, root: &str, ev: &FsEvent, include_entry: bool) -> Value {
    let mut v = json!({"name": ev.name, "type": event_type(ev.op)});
    if include_entry && matches!(ev.op, FsOp::Create | FsOp::Write | FsOp::Chmod) {
        if let Ok(info) = envd.guest.stat(&format!("{root}/{}", ev.name)).await {
            v["entry"] = entry(envd, &info).await;
        }
    }
    v
}

/// envd's message for a missing path.
fn missing(path: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("file not found: {path}"))
}

fn guest_kind(e: &ManagerError) -> Option<GuestErrorKind> {
    match e {
        ManagerError::Guest { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// `POST /filesystem.Filesystem/{method}`.
pub async fn call(
    State(state): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let envd = match Envd::from_headers(&state, &headers).await {
        Ok(e) => e,
        Err(r) => return super::process::refuse(&headers, r.rpc()),
    };
    if method == "WatchDir" {
        return watch_dir(&envd, &headers, body).await;
    }
    let bytes = match connect::unary_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let result = match method.as_str() {
        "Stat" => stat(&envd, &headers, &bytes).await,
        "ListDir" => list_dir(&envd, &headers, &bytes).await,
        "MakeDir" => make_dir(&envd, &headers, &bytes).await,
        "Move" => move_entry(&envd, &headers, &bytes).await,
        "Remove" => remove(&envd, &headers, &bytes).await,
        "CreateWatcher" => create_watcher(&state, &envd, &headers, &bytes).await,
        "GetWatcherEvents" => get_watcher_events(&state, &envd, &headers, &bytes).await,
        "RemoveWatcher" => remove_watcher(&state, &envd, &headers, &bytes).await,
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("filesystem.Filesystem has no method {other:?}"),
        )
        .into_response()),
    };
    result.unwrap_or_else(|r| r)
}

fn rpc(e: impl Into<RpcError>) -> Response {
    e.into().into_response()
}

async fn stat(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: PathRequest = connect::parse_unary(headers, body)?;
    let path = envd.resolve(&req.path).map_err(rpc)?;
    let info = envd
        .guest
        .stat(&path)
        .await
        .map_err(|e| match guest_kind(&e) {
            Some(GuestErrorKind::NotFound) => rpc(missing(&path)),
            _ => rpc(e),
        })?;
    Ok(connect::unary(&json!({"entry": entry(envd, &info).await})))
}

async fn list_dir(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: ListDirRequest = connect::parse_unary(headers, body)?;
    let path = envd.resolve(&req.path).map_err(rpc)?;
    let depth = req.depth.max(1);
    let listing = envd
        .guest
        .list_files(&path, depth > 1, Some(depth))
        .await
        .map_err(|e| match guest_kind(&e) {
            Some(GuestErrorKind::NotFound) => rpc(RpcError::new(
                Code::NotFound,
                format!("directory not found: {path}"),
            )),
            Some(GuestErrorKind::NotADirectory) => rpc(RpcError::invalid(format!(
                "path is not a directory: {path}"
            ))),
            _ => rpc(e),
        })?;
    if listing.truncated {
        return Err(rpc(RpcError::new(
            Code::ResourceExhausted,
            format!(
                "{path} holds more than {} entries at depth {depth}; list a smaller depth or a subdirectory",
                listing.entries.len()
            ),
        )));
    }
    let mut entries = Vec::with_capacity(listing.entries.len());
    for info in &listing.entries {
        entries.push(entry(envd, info).await);
    }
    Ok(connect::unary(&json!({"entries": entries})))
}

async fn make_dir(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: PathRequest = connect::parse_unary(headers, body)?;
    let path = envd.resolve(&req.path).map_err(rpc)?;
    match envd.guest.stat(&path).await {
        Ok(info) if info.kind == FileKind::Directory => {
            return Err(rpc(RpcError::new(
                Code::AlreadyExists,
                format!("directory already exists: {path}"),
            )))
        }
        Ok(_) => {
            return Err(rpc(RpcError::invalid(format!(
                "path already exists but it is not a directory: {path}"
            ))))
        }
        Err(e) if guest_kind(&e) == Some(GuestErrorKind::NotFound) => {}
        Err(e) => return Err(rpc(e)),
    }
    let info = envd
        .guest
        .mkdir(MakeDir {
            path: path.clone(),
            parents: true,
            mode: Some(0o755),
            owner: Some(envd.user.clone()),
        })
        .await
        .map_err(rpc)?;
    Ok(connect::unary(&json!({"entry": entry(envd, &info).await})))
}

async fn move_entry(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: MoveRequest = connect::parse_unary(headers, body)?;
    let from = envd.resolve(&req.source).map_err(rpc)?;
    let to = envd.resolve(&req.destination).map_err(rpc)?;
    // Like envd: the destination's parents are made first.
    envd.guest
        .mkdir(MakeDir {
            path: parent_of(&to).to_owned(),
            parents: true,
            mode: Some(0o755),
            owner: Some(envd.user.clone()),
        })
        .await
        .map_err(rpc)?;
    envd.guest
        .rename(&from, &to)
        .await
        .map_err(|e| match guest_kind(&e) {
            Some(GuestErrorKind::NotFound) => rpc(missing(&from)),
            _ => rpc(e),
        })?;
    let info = envd.guest.stat(&to).await.map_err(rpc)?;
    Ok(connect::unary(&json!({"entry": entry(envd, &info).await})))
}

async fn remove(envd: &Envd, headers: &HeaderMap, body: &[u8]) -> Result<Response, Response> {
    let req: PathRequest = connect::parse_unary(headers, body)?;
    let path = envd.resolve(&req.path).map_err(rpc)?;
    match envd.guest.delete(&path, true).await {
        // Like envd (RemoveAll): removing what is not there succeeds.
        Ok(()) => {}
        Err(e) if guest_kind(&e) == Some(GuestErrorKind::NotFound) => {}
        Err(e) => return Err(rpc(e)),
    }
    Ok(connect::unary(&json!({})))
}

/// Starts a watch after envd's checks (the path is a directory).
async fn start_watch(
    envd: &Envd,
    path: &str,
    recursive: bool,
) -> Result<locale2b_manager::FsEvents, RpcError> {
    envd.guest
        .watch_dir(path, recursive)
        .await
        .map_err(|e| match guest_kind(&e) {
            Some(GuestErrorKind::NotFound) => {
                RpcError::new(Code::NotFound, format!("path {path} not found"))
            }
            Some(GuestErrorKind::NotADirectory) => {
                RpcError::invalid(format!("path {path} not a directory"))
            }
            _ => e.into(),
        })
}

async fn watch_dir(envd: &Envd, headers: &HeaderMap, body: Body) -> Response {
    let mut env = match Envelopes::open(headers, body) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let req: WatchRequest = match env.next().await {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return connect::stream_error(e),
    };
    let root = match envd.resolve(&req.path) {
        Ok(p) => p,
        Err(e) => return connect::stream_error(e),
    };
    let mut events = match start_watch(envd, &root, req.recursive).await {
        Ok(ev) => ev,
        Err(e) => return connect::stream_error(e),
    };
    let envd = envd.clone();
    let keepalive = connect::keepalive(headers);
    let frames = Pump::spawn(keepalive, json!({"keepalive": {}}), move |tx| async move {
        tx.message(&json!({"start": {}})).await?;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    let v = fs_event(&envd, &root, &ev, req.include_entry).await;
                    tx.message(&json!({"filesystem": v})).await?;
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Ok(Ok(()))
    });
    connect::stream_response(frames)
}

/// One polling watcher: its events wait here until fetched.
#[derive(Debug)]
struct Watcher {
    sandbox: SandboxId,
    events: Arc<Mutex<WatcherEvents>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct WatcherEvents {
    pending: Vec<Value>,
    /// Sticky: once set, every fetch answers it.
    error: Option<RpcError>,
}

/// The polling watchers of every sandbox (`CreateWatcher` … `RemoveWatcher`).
#[derive(Debug, Default)]
pub struct Watchers {
    by_id: Mutex<HashMap<String, Watcher>>,
}

impl Watchers {
    /// Forgets ended watchers of sandboxes that are gone (nobody can fetch
    /// their events any more).
    async fn purge(&self, state: &AppState) {
        let ended: Vec<(String, SandboxId)> = crate::e2b::lock(&self.by_id)
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(id, w)| (id.clone(), w.sandbox.clone()))
            .collect();
        for (id, sandbox) in ended {
            if state.sandboxes().get(&sandbox).await.is_err() {
                crate::e2b::lock(&self.by_id).remove(&id);
            }
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for w in crate::e2b::lock(&self.by_id).values() {
            w.task.abort();
        }
    }
}

async fn create_watcher(
    state: &AppState,
    envd: &Envd,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let req: WatchRequest = connect::parse_unary(headers, body)?;
    let root = envd.resolve(&req.path).map_err(rpc)?;
    let watchers = &state.e2b().watchers;
    watchers.purge(state).await;
    {
        let map = crate::e2b::lock(&watchers.by_id);
        let mine = map
            .values()
            .filter(|w| w.sandbox == envd.info.sandbox_id)
            .count();
        if mine >= MAX_WATCHERS_PER_SANDBOX {
            return Err(rpc(RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "sandbox {} has {mine} watchers; remove some first (RemoveWatcher)",
                    envd.info.sandbox_id
                ),
            )));
        }
    }
    let mut events = start_watch(envd, &root, req.recursive).await.map_err(rpc)?;
    let id = format!("w{:016x}", rand::random::<u64>());
    let sandbox = envd.info.sandbox_id.clone();
    let buffer = Arc::new(Mutex::new(WatcherEvents::default()));
    let envd = envd.clone();
    let sink = buffer.clone();
    let include = req.include_entry;
    let task = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            let v = match ev {
                Ok(ev) => fs_event(&envd, &root, &ev, include).await,
                Err(e) => {
                    crate::e2b::lock(&sink).error = Some(e.into());
                    return;
                }
            };
            let mut s = crate::e2b::lock(&sink);
            if s.pending.len() >= MAX_WATCHER_EVENTS {
                s.error = Some(RpcError::new(
                    Code::ResourceExhausted,
                    format!("more than {MAX_WATCHER_EVENTS} events were not fetched; events were lost, create a new watcher and fetch more often"),
                ));
                return;
            }
            s.pending.push(v);
        }
    });
    crate::e2b::lock(&watchers.by_id).insert(
        id.clone(),
        Watcher {
            sandbox,
            events: buffer,
            task,
        },
    );
    Ok(connect::unary(&json!({"watcherId": id})))
}

fn watcher_not_found(id: &str) -> Response {
    rpc(RpcError::new(
        Code::NotFound,
        format!("watcher with id {id} not found"),
    ))
}

async fn get_watcher_events(
    state: &AppState,
    envd: &Envd,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let req: WatcherRequest = connect::parse_unary(headers, body)?;
    let events = {
        let map = crate::e2b::lock(&state.e2b().watchers.by_id);
        match map.get(&req.watcher_id) {
            Some(w) if w.sandbox == envd.info.sandbox_id => w.events.clone(),
            _ => return Err(watcher_not_found(&req.watcher_id)),
        }
    };
    let mut e = crate::e2b::lock(&events);
    if let Some(err) = &e.error {
        return Err(rpc(err.clone()));
    }
    let pending = std::mem::take(&mut e.pending);
    Ok(connect::unary(&json!({"events": pending})))
}

async fn remove_watcher(
    state: &AppState,
    envd: &Envd,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let req: WatcherRequest = connect::parse_unary(headers, body)?;
    let mut map = crate::e2b::lock(&state.e2b().watchers.by_id);
    match map.get(&req.watcher_id) {
        Some(w) if w.sandbox == envd.info.sandbox_id => {
            if let Some(w) = map.remove(&req.watcher_id) {
                w.task.abort();
            }
            Ok(connect::unary(&json!({})))
        }
        _ => Err(watcher_not_found(&req.watcher_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_go() {
        assert_eq!(permissions(FileKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileKind::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileKind::Symlink, 0o777), "Lrwxrwxrwx");
        assert_eq!(permissions(FileKind::File, 0o4755), "urwxr-xr-x");
        assert_eq!(permissions(FileKind::Directory, 0o1777), "dtrwxrwxrwx");
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
    }
}
