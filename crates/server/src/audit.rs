//! The audit log: one JSON line for every mutating call and every failed
//! authentication, appended to a file that rotates by size.
//!
//! A line holds when, which key (its name, never the key), from where, what
//! (method, path without the query, sandbox or workspace id), the outcome
//! (status) and the request id. Never bodies, file contents, queries or
//! headers. Lines are written with one `write` each on a file opened in
//! append mode, under a lock, so they never interleave.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One audit line.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC, milliseconds.
    pub time: String,
    /// Name of the key that authenticated the call; `null` when none did.
    pub key: Option<&'a str>,
    /// Peer address (`ip:port`); `null` on a Unix socket.
    pub source: Option<String>,
    /// HTTP method.
    pub method: &'a str,
    /// Request path, without the query.
    pub route: &'a str,
    /// Sandbox named by the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<&'a str>,
    /// Workspace named by the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<&'a str>,
    /// HTTP status of the answer.
    pub status: u16,
    /// `ok` (2xx/3xx), `error`, `unauthenticated` (no or a wrong key) or
    /// `throttled` (too many failed authentications from this source).
    pub outcome: &'a str,
    /// The request's id (`X-Request-Id`).
    pub request_id: Option<String>,
}

/// The audit log file and its rotation.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl AuditLog {
    /// Opens (creating) `path` for appending. When a write would take the
    /// file past `max_bytes` it is renamed to `<path>.1` (older ones shift
    /// to `.2` … `.<keep>`, the oldest is dropped) and a new file begun;
    /// `keep == 0` keeps no old file.
    ///
    /// # Errors
    /// The file or its directory cannot be created or opened.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes: max_bytes.max(1),
            keep,
            file: Mutex::new(Open { file, size }),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. A failure is logged, never returned: the call it
    /// describes has already been answered.
    pub fn write(&self, record: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit record not serializable");
                return;
            }
        };
        line.push(b'\n');
        let mut open = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.size > 0 && open.size + line.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate(&mut open) {
                tracing::error!(path = %self.path.display(), error = %e, "audit log rotation failed");
            }
        }
        match open.file.write_all(&line) {
            Ok(()) => open.size += line.len() as u64,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit log write failed")
            }
        }
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self, open: &mut Open) -> std::io::Result<()> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        open.file = open_append(&self.path)?;
        open.size = 0;
        Ok(())
    }
}

/// `2026-12-07T14:03:52.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(route: &str) -> AuditRecord<'_> {
        AuditRecord {
            time: now_rfc3339(),
            key: Some("agent-a"),
            source: Some("127.0.0.1:5555".into()),
            method: "POST",
            route,
            sandbox_id: Some("sb-1"),
            workspace_id: None,
            status: 200,
            outcome: "ok",
            request_id: Some("00ff".into()),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_are_json_with_the_fields_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let log = AuditLog::open(&path, 1 << 20, 2).unwrap();
        log.write(&record("/sandboxes/sb-1/exec"));
        let got = lines(&path);
        assert_eq!(got.len(), 1);
        let l = &got[0];
        for field in [
            "time",
            "key",
            "source",
            "method",
            "route",
            "sandbox_id",
            "status",
            "outcome",
            "request_id",
        ] {
            assert!(l.get(field).is_some(), "{field} missing: {l}");
        }
        assert!(l.get("workspace_id").is_none());
        assert_eq!(l["route"], "/sandboxes/sb-1/exec");
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopening appends.
        drop(log);
        AuditLog::open(&path, 1 << 20, 2)
            .unwrap()
            .write(&record("/x"));
        assert_eq!(lines(&path).len(), 2);
    }

    #[test]
    fn rotation_by_size_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let one = serde_json::to_vec(&record("/r/0000")).unwrap().len() as u64 + 1;
        // Room for three lines per file, two old files kept.
        let log = AuditLog::open(&path, one * 3, 2).unwrap();
        for i in 0..10 {
            log.write(&record(&format!("/r/{i:04}")));
        }
        let routes = |p: &Path| -> Vec<String> {
            lines(p)
                .iter()
                .map(|l| l["route"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(routes(&path), ["/r/0009"]);
        assert_eq!(routes(&log.rotated(1)), ["/r/0006", "/r/0007", "/r/0008"]);
        assert_eq!(routes(&log.rotated(2)), ["/r/0003", "/r/0004", "/r/0005"]);
        assert!(!log.rotated(3).exists(), "only `keep` old files");
    }
}
