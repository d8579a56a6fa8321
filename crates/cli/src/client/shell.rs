//! `locale2b sandbox shell`: an interactive program on a guest PTY through
//! the process WebSocket. The local terminal goes raw (Ctrl-C, Ctrl-D and
//! every other key go to the guest), window changes resize the guest PTY,
//! and the terminal is restored however the session ends.

use super::api::{q, Api};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method as M;
use serde_json::{json, Value};
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::AsFd as _;
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// The terminal's size (rows, cols); 24x80 when stdout is not one.
fn window_size() -> (u16, u16) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct passed.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Runs the session; the program's exit code.
pub async fn run(api: &Api, id: &str, cmd: Option<&str>) -> anyhow::Result<i32> {
    let (rows, cols) = window_size();
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let mut body = json!({"pty": {"rows": rows, "cols": cols}, "env": {"TERM": term}});
    match cmd {
        Some(c) => body["command"] = Value::from(c),
        None => body["argv"] = json!(["bash", "-l"]),
    }
    let proc = api
        .call(
            M::POST,
            &format!("/sandboxes/{}/processes", q(id)),
            Some(body),
        )
        .await?;
    let pid = proc["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the server answered no pid: {proc}"))?;
    let ws_url = format!(
        "{}/sandboxes/{}/processes/{pid}/pty",
        api.url().replacen("http", "ws", 1),
        q(id)
    );
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )?;
    if let Some(k) = api.key() {
        req.headers_mut().insert("x-api-key", k.parse()?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    let (mut tx, mut rx) = ws.split();

    let raw = RawMode::enter();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 4096];
    let mut stdin_open = true;
    let mut out = std::io::stdout();
    let mut code = 1;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => {
                    // End of input (not a terminal): end the program's input.
                    stdin_open = false;
                    let _ = tx.send(Message::Binary(vec![4u8].into())).await;
                }
                Ok(n) => {
                    if tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            _ = winch.recv() => {
                let (rows, cols) = window_size();
                let msg = json!({"type": "resize", "rows": rows, "cols": cols}).to_string();
                let _ = tx.send(Message::Text(msg.into())).await;
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    match v["type"].as_str() {
                        Some("exit") => {
                            code = super::exit_code_of(&v);
                            break;
                        }
                        // A keystroke or resize the server could not
                        // pass on (e.g. after the program ended); the
                        // session goes on.
                        Some("error") => {
                            tracing::debug!(message = %v["message"], "the server refused a control message");
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    anyhow::bail!("the session broke: {e}");
                }
            },
        }
    }
    drop(raw);
    let _ = api
        .call(
            M::DELETE,
            &format!("/sandboxes/{}/processes/{pid}", q(id)),
            None,
        )
        .await;
    Ok(code)
}
