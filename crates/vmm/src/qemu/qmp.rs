//! A small QMP client: JSON lines over a Unix socket.
//!
//! One command at a time (a mutex serialises callers); every command carries
//! an `id` and the reply with that id is returned, asynchronous events and
//! stale replies are skipped. Every exchange has a timeout.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// Writes all of `data` to `stream`, the first bytes with `fd` attached
/// as `SCM_RIGHTS` (QEMU takes a passed descriptor from the message that
/// carries it).
async fn send_with_fd(
    stream: &UnixStream,
    data: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::{AsRawFd as _, RawFd};
    let fds: [RawFd; 1] = [fd.as_raw_fd()];
    let mut sent = 0;
    let mut first = true;
    while sent < data.len() {
        stream.writable().await?;
        let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&data[sent..])];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage<'_>] = if first { &cmsg } else { &[] };
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting, reading or writing failed.
    #[error("QMP i/o failed")]
    Io(#[source] std::io::Error),
    /// QEMU closed the connection.
    #[error("QMP connection closed")]
    Closed,
    /// A line was not JSON or not the expected shape.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
    /// QEMU answered with an error.
    #[error("QMP command {command} failed: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's `error.desc`.
        desc: String,
    },
    /// No answer in time.
    #[error("QMP {what} timed out after {after:?}")]
    Timeout {
        /// The command (or `connect`, `greeting`).
        what: String,
        /// The timeout that passed.
        after: std::time::Duration,
    },
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

/// A connected, capability-negotiated QMP session.
pub struct Qmp {
    conn: Mutex<Conn>,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Qmp {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds the handshake and, later, each command.
    ///
    /// # Errors
    /// Connection failure, a bad greeting, or a timeout.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                what: "connect".into(),
                after: timeout,
            })?
            .map_err(QmpError::Io)?;
        let (r, w) = stream.into_split();
        let mut conn = Conn {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
        };
        let greeting = tokio::time::timeout(timeout, read_message(&mut conn.reader))
            .await
            .map_err(|_| QmpError::Timeout {
                what: "greeting".into(),
                after: timeout,
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "expected greeting, got {greeting}"
            )));
        }
        let qmp = Self {
            conn: Mutex::new(conn),
            timeout,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value.
    ///
    /// # Errors
    /// [`QmpError::Command`] when QEMU reports an error; i/o errors; timeout.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.timeout)
            .await
    }

    /// As [`Qmp::execute`] with an explicit timeout.
    ///
    /// # Errors
    /// As [`Qmp::execute`].
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.exchange(command, arguments, timeout, None).await
    }

    /// `getfd`: hands `fd` to QEMU under `name` (sent with the command as
    /// `SCM_RIGHTS`), for URIs such as `fd:<name>`. QEMU keeps its own
    /// copy; the caller's stays open.
    ///
    /// # Errors
    /// As [`Qmp::execute`].
    pub async fn send_fd(
        &self,
        name: &str,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), QmpError> {
        self.exchange(
            "getfd",
            Some(json!({ "fdname": name })),
            self.timeout,
            Some(fd),
        )
        .await
        .map(|_| ())
    }

    async fn exchange(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let mut conn = self.conn.lock().await;
        let id = conn.next_id;
        conn.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let exchange = async {
            match fd {
                None => conn
                    .writer
                    .write_all(line.as_bytes())
                    .await
                    .map_err(QmpError::Io)?,
                Some(fd) => send_with_fd(conn.writer.as_ref(), line.as_bytes(), fd)
                    .await
                    .map_err(QmpError::Io)?,
            }
            loop {
                let reply = read_message(&mut conn.reader).await?;
                if reply.get("event").is_some() {
                    continue;
                }
                if reply.get("id").and_then(Value::as_u64) != Some(id) {
                    // A reply to an earlier command that timed out.
                    continue;
                }
                if let Some(ret) = reply.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(err) = reply.get("error") {
                    let desc = err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned();
                    return Err(QmpError::Command {
                        command: command.to_owned(),
                        desc,
                    });
                }
                return Err(QmpError::Protocol(reply.to_string()));
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| QmpError::Timeout {
                what: command.to_owned(),
                after: timeout,
            })?
    }

    /// `query-status`: returns QEMU's run state (`running`, `paused`,
    /// `postmigrate`, `inmigrate`, ...).
    ///
    /// # Errors
    /// As [`Qmp::execute`].
    pub async fn run_state(&self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| QmpError::Protocol(format!("query-status returned {v}")))
    }
}

async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<Value, QmpError> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await.map_err(QmpError::Io)?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        return serde_json::from_str(trimmed)
            .map_err(|_| QmpError::Protocol(trimmed.chars().take(200).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QMP server: greets, then answers each command through `reply`,
    /// emitting an event before every answer.
    fn fake_server(
        listener: UnixListener,
        reply: fn(&str, &Value) -> Option<Value>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .await
                .expect("greet");
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).await.expect("read") > 0 {
                let v: Value = serde_json::from_str(&line).expect("json");
                line.clear();
                let cmd = v["execute"].as_str().expect("execute").to_owned();
                seen.push(cmd.clone());
                w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\r\n")
                    .await
                    .expect("event");
                if let Some(mut answer) = reply(&cmd, &v) {
                    answer["id"] = v["id"].clone();
                    w.write_all(format!("{answer}\r\n").as_bytes())
                        .await
                        .expect("answer");
                }
            }
            seen
        })
    }

    #[tokio::test]
    async fn commands_events_errors_and_timeouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = fake_server(listener, |cmd, v| match cmd {
            "qmp_capabilities" => Some(json!({"return": {}})),
            "query-status" => Some(json!({"return": {"status": "paused", "running": false}})),
            "migrate" => {
                assert_eq!(v["arguments"]["uri"], "exec:cat");
                Some(json!({"error": {"class": "GenericError", "desc": "no way"}}))
            }
            _ => None, // never answered
        });
        let qmp = Qmp::connect(&path, Duration::from_millis(500))
            .await
            .expect("connect");
        assert_eq!(qmp.run_state().await.expect("status"), "paused");
        let err = qmp
            .execute("migrate", Some(json!({"uri": "exec:cat"})))
            .await
            .expect_err("refused");
        assert!(matches!(err, QmpError::Command { ref desc, .. } if desc == "no way"));
        let err = qmp.execute("silence", None).await.expect_err("timeout");
        assert!(matches!(err, QmpError::Timeout { .. }));
        // The session still works after a timeout.
        assert_eq!(qmp.run_state().await.expect("status"), "paused");
        drop(qmp);
        let seen = server.await.expect("server");
        assert_eq!(
            seen,
            [
                "qmp_capabilities",
                "query-status",
                "migrate",
                "silence",
                "query-status"
            ]
        );
    }

    #[tokio::test]
    async fn closed_connection_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            drop(s);
        });
        let err = Qmp::connect(&path, Duration::from_secs(2))
            .await
            .expect_err("closed");
        assert!(matches!(err, QmpError::Closed), "{err:?}");
    }
}
