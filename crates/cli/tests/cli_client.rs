//! End-to-end: every client subcommand of the `locale2b` binary against a
//! real server and real guests: `--json` parsed, exit codes, `cp` of
//! 20 MiB both ways, and `shell` driven through a pseudo-terminal (type,
//! read, resize, Ctrl-C, exit).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Cli {
    url: String,
    config: std::path::PathBuf,
}

impl Cli {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_locale2b"));
        c.args(args)
            .env("LOCALE2B_BASE_URL", &self.url)
            .env("LOCALE2B_API_KEY", KEY)
            .env("LOCALE2B_CLI_CONFIG", &self.config)
            .env_remove("LOCALE2B_CONTEXT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        println!(
            "$ locale2b {} -> {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts exit 0; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "locale2b {}", args.join(" "));
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

fn sha256(path: &std::path::Path) -> String {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `shell` subcommand on a pseudo-terminal: the master side, read in
/// a thread.
struct Pty {
    master: std::fs::File,
    seen: String,
    rx: mpsc::Receiver<Vec<u8>>,
    child: std::process::Child,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Self {
        let pty = nix::pty::openpty(
            Some(&nix::pty::Winsize {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            None,
        )
        .unwrap();
        let slave: OwnedFd = pty.slave;
        let slave_fd = slave.as_raw_fd();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY between fork and exec touch no
        // memory of the parent: the pty becomes the controlling terminal.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(move || {
                libc::setsid();
                libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            master,
            seen: String::new(),
            rx,
            child,
        }
    }

    fn type_in(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    /// Reads until `what` appears (60 s at most); what came after it stays.
    fn expect(&mut self, what: &str) {
        assert!(
            self.try_expect(what, Duration::from_secs(60)),
            "no {what:?} in {:?}",
            self.seen
        );
    }

    /// [`Self::expect`] within `limit`; false when it did not appear.
    fn try_expect(&mut self, what: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.seen.find(what) {
                self.seen.drain(..i + what.len());
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(b) = self.rx.recv_timeout(left) {
                self.seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize; the kernel then signals
        // the terminal's foreground group (the client) with SIGWINCH.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
    }

    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "the shell client did not exit: {:?}",
                self.seen
            );
            // Keep draining the output so the client never blocks on it.
            if let Ok(b) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_subcommand_against_a_real_server() {
    let Some(image) = image_dir() else { return };
    let base = base_dir(&image);
    let _cleanup = KillOnDrop(base.path().to_path_buf());
    let (mut server, url) = start(base.path(), &[]);
    let cli = Cli {
        url: url.clone(),
        config: base.path().join("cli.toml"),
    };

    // Contexts: saved, listed, used (with no URL in the environment).
    cli.ok(&["context", "add", "here", "--server", &url, "--key", KEY]);
    let ctx = cli.json(&["context", "ls", "--json"]);
    assert_eq!(ctx["contexts"][0]["name"], "here", "{ctx}");
    assert_eq!(ctx["contexts"][0]["current"], true);
    assert_eq!(ctx["contexts"][0]["has_key"], true);
    assert!(!ctx.to_string().contains(KEY), "context ls shows the key");

    // create (through the context alone), ls, info.
    let out = cli
        .cmd(&["sandbox", "create", "--memory-mb", "256"])
        .env_remove("LOCALE2B_BASE_URL")
        .env_remove("LOCALE2B_API_KEY")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("sb-"), "{id}");
    let list = cli.json(&["sandbox", "ls", "--json"]);
    assert!(list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["sandbox_id"] == id.as_str()));
    let table = cli.ok(&["sandbox", "ls"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("running") && l.contains(" none ")),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("NETWORK"), "{table}");
    let info = cli.json(&["sandbox", "info", &id, "--json"]);
    assert_eq!(
        (info["sandbox_id"].as_str(), info["memory_mb"].as_u64()),
        (Some(id.as_str()), Some(256))
    );

    // exec: streams, keeps stdout and stderr apart, exits with the command's code.
    let out = cli.run(&[
        "sandbox",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    assert_eq!(
        cli.ok(&[
            "sandbox",
            "exec",
            &id,
            "-e",
            "X=4",
            "-w",
            "/tmp",
            "echo $X-$(pwd)"
        ]),
        "4-/tmp\n"
    );
    let out = cli.run(&["sandbox", "exec", &id, "--timeout", "1", "sleep 30"]);
    assert_eq!(out.status.code(), Some(124));

    // cp: 20 MiB up and back, checksums equal (and the guest's own).
    let up = base.path().join("up.bin");
    let mut data = vec![0u8; 20 * 1024 * 1024];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
    std::fs::write(&up, &data).unwrap();
    let sum = sha256(&up);
    cli.ok(&[
        "sandbox",
        "cp",
        up.to_str().unwrap(),
        &format!("{id}:/workspace/"),
    ]);
    let guest_sum = cli.ok(&[
        "sandbox",
        "exec",
        &id,
        "sha256sum /workspace/up.bin | cut -d' ' -f1",
    ]);
    assert_eq!(guest_sum.trim(), sum);
    let down = base.path().join("down.bin");
    cli.ok(&[
        "sandbox",
        "cp",
        &format!("{id}:/workspace/up.bin"),
        down.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&down), sum);
    let out = cli.run(&[
        "sandbox",
        "cp",
        &format!("{id}:/workspace/missing"),
        down.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));
    assert_eq!(sha256(&down), sum, "a failed download changed the target");

    // ps and logs of a background process.
    let http = reqwest::Client::new();
    let (st, p) = call(
        &http,
        reqwest::Method::POST,
        format!("{url}/sandboxes/{id}/processes"),
        Some(serde_json::json!({"command": "echo line-1; echo line-2 >&2", "tag": "t1"})),
    )
    .await;
    assert_eq!(st, 201, "{p}");
    assert_eq!(cli.ok(&["sandbox", "logs", &id, "t1", "-f"]), "line-1\n");
    let ps = cli.json(&["sandbox", "ps", &id, "--json"]);
    assert_eq!(ps["processes"][0]["tag"], "t1", "{ps}");
    let out = cli.run(&["sandbox", "logs", &id, "t1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line-1\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "line-2\n");

    // shell through a pseudo-terminal.
    let mut pty = Pty::spawn(cli.cmd(&["sandbox", "shell", &id]));
    pty.type_in("echo hi-$((6*7))\r");
    pty.expect("hi-42");
    pty.resize(40, 120);
    // The resize and the typed line travel separately; ask until the
    // guest's PTY has the new size.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pty.type_in("echo size=$(stty size | tr ' ' x)\r");
        if pty.try_expect("size=40x120", Duration::from_secs(5)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest PTY was not resized: {:?}",
            pty.seen
        );
    }
    pty.type_in("echo started-$((2+2)); sleep 30; echo not-interrupted\r");
    pty.expect("started-4");
    // Ctrl-C: a ^C that reaches bash before it started `sleep` is ignored
    // there, so send it until the prompt is back (bounded well below 30 s).
    let interrupted = Instant::now();
    loop {
        pty.type_in("\u{3}");
        if pty.try_expect(":/workspace# ", Duration::from_secs(2)) {
            break;
        }
        assert!(
            interrupted.elapsed() < Duration::from_secs(20),
            "Ctrl-C did not interrupt the sleep: {:?}",
            pty.seen
        );
    }
    assert!(!pty.seen.contains("not-interrupted"), "{:?}", pty.seen);
    pty.type_in("echo after-$((1+1))\r");
    pty.expect("after-2");
    pty.type_in("exit 3\r");
    assert_eq!(pty.wait(), Some(3));

    // pause, resume.
    cli.ok(&["sandbox", "pause", &id]);
    assert_eq!(
        cli.json(&["sandbox", "info", &id, "--json"])["status"],
        "paused"
    );
    cli.ok(&["sandbox", "resume", &id]);
    assert_eq!(
        cli.ok(&["sandbox", "exec", &id, "cat /workspace/up.bin | wc -c"])
            .trim(),
        "20971520"
    );

    // network: a sandbox created without one cannot get one (409, said);
    // mode none is accepted; a bad entry at create is a 400 naming it.
    let out = cli.run(&["sandbox", "network", &id, "--mode", "full"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a network") && err.contains("HTTP 409"),
        "{err}"
    );
    assert!(cli
        .ok(&["sandbox", "network", &id, "--mode", "none"])
        .contains("\"mode\":\"none\""));
    let out = cli.run(&[
        "sandbox",
        "create",
        "--network",
        "allowlist",
        "--allow",
        "exa mple.com",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"exa mple.com\" is not a valid domain name") && err.contains("HTTP 400"),
        "{err}"
    );

    // rm; the sandbox is gone, and an error says what the server said.
    cli.ok(&["sandbox", "rm", &id]);
    let out = cli.run(&["sandbox", "info", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("HTTP 404"),
        "{err}"
    );

    // workspaces: a named one outlives its sandbox and is removed.
    let named = cli.json(&[
        "sandbox",
        "create",
        "--memory-mb",
        "256",
        "--workspace",
        "ws-cli-test",
        "--json",
    ]);
    let nid = named["sandbox_id"].as_str().unwrap().to_owned();
    cli.ok(&["sandbox", "rm", &nid]);
    let ws = cli.json(&["workspace", "ls", "--json"]);
    assert!(
        ws["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["workspace_id"] == "ws-cli-test"),
        "{ws}"
    );
    assert!(cli.ok(&["workspace", "ls"]).contains("ws-cli-test"));
    cli.ok(&["workspace", "rm", "ws-cli-test"]);
    let ws = cli.json(&["workspace", "ls", "--json"]);
    assert!(!ws.to_string().contains("ws-cli-test"), "{ws}");

    // Completion scripts name the subcommands.
    assert!(cli.ok(&["completion", "bash"]).contains("sandbox"));

    // A server that is not there: a message that says so.
    let out = cli
        .cmd(&["sandbox", "ls"])
        .env("LOCALE2B_BASE_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the locale2b server"));

    let _ = server.kill();
    let _ = server.wait();
}
