//! `locale2b bench soak`: a long mixed load against a real server, then
//! leak checks.
//!
//! Unless `--url` is given, the soak starts its own server the way the bench
//! does (a temporary base directory whose `images/default` links to the
//! installed image). For `--minutes` it runs `--clients` concurrent loops,
//! each repeating one cycle: create a small sandbox, several execs (stdout
//! checked), write a file and read it back (bytes checked), stat and list
//! it, run a background process and read its output (checked), get and list
//! sandboxes, pause, resume, check the file and an exec again, destroy.
//! Every request is counted by kind, ok or failed; a failed request (an
//! error answer, no answer, or an answer that fails its check) is logged and
//! counted, never fatal.
//!
//! When every client stopped and everything it created is destroyed, the
//! soak checks for leaks: server RSS flat after the warm-up, server open
//! files back to where they started, no VMM process left mentioning the base
//! directory, the disk use of `sandboxes/` and `workspaces/` back to the
//! start value, nothing left in `GET /sandboxes` and `GET /workspaces`. It
//! prints a table on stdout (progress on stderr), writes the JSON document
//! with `--json PATH`, and fails when a request failed or a leak was found.

use super::api::{ms_since, str_field, Api};
use super::report::{self, Environment};
use super::stats::Summary;
use super::{
    allocated_bytes, err_note, kib_to_mib, server, Tracker, CREATE_TIMEOUT, LIFECYCLE_TIMEOUT,
    OP_TIMEOUT,
};
use anyhow::{ensure, Context};
use base64::Engine as _;
use rand::RngCore as _;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Version of the soak's JSON document.
const SOAK_SCHEMA_VERSION: u32 = 1;
/// Bytes of the file each cycle writes and reads back.
const FILE_BYTES: usize = 4096;
/// How long a background process may take to print everything.
const PROCESS_WAIT: Duration = Duration::from_secs(30);
/// Pause between two reads of a background process's output.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after a failed create before the client tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Extra time, past the soak's end, the clients get to finish their cycles.
const CLIENT_GRACE: Duration = Duration::from_secs(600);
/// How long VMM processes and open files may take to go after cleanup.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Seconds between two progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Errors kept whole in the report (all are counted).
const MAX_ERRORS: usize = 100;
/// RSS may grow to `first * RSS_FACTOR + RSS_SLACK_MIB` and still be flat.
const RSS_FACTOR: f64 = 1.5;
/// See [`RSS_FACTOR`].
const RSS_SLACK_MIB: f64 = 20.0;

/// Flags of `locale2b bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// How long the clients keep starting cycles, in minutes (fractions
    /// allowed, e.g. 0.5). A cycle under way when the time is up finishes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Concurrent client loops (each with one sandbox at a time).
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Execs per cycle (plus one after each resume).
    #[arg(long, default_value_t = 3)]
    pub execs: usize,
    /// Guest RAM of each sandbox, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u32,
    /// Soak this running server (e.g. http://127.0.0.1:8080) instead of
    /// starting one. Needs --api-key; leak checks of the server process need
    /// --server-pid, those of its files --base-dir.
    #[arg(long, requires = "api_key")]
    pub url: Option<String>,
    /// API key of the server given with --url.
    #[arg(long, requires = "url")]
    pub api_key: Option<String>,
    /// PID of the server given with --url (for its RSS and open files).
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// Base directory of the server under test (with --url), and where the
    /// installed image is found (default: the configured base_dir).
    #[arg(long)]
    pub base_dir: Option<PathBuf>,
    /// Guest image directory (default: <base-dir>/images/default).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Executable started with `serve` (default: this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// VMM backend of the soak's own server (default: the configured `vmm`
    /// when it is not `auto`, else qemu).
    #[arg(long)]
    pub vmm: Option<String>,
    /// Seconds between two samples of the server's RSS.
    #[arg(long, default_value_t = 5)]
    pub sample_sec: u64,
    /// Open files the server may hold more at the end than at the start.
    #[arg(long, default_value_t = 8)]
    pub fd_tolerance: usize,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Copy the own server's log to this file before its directory goes.
    #[arg(long, value_name = "PATH")]
    pub server_log: Option<PathBuf>,
    /// Seconds to wait for the soak's own server to answer /health.
    #[arg(long, default_value_t = 60)]
    pub server_timeout_sec: u64,
}

impl SoakArgs {
    /// Fills the flags left unset from the configuration.
    fn resolve(mut self, config: &locale2b_config::Config) -> Self {
        use locale2b_config::VmmChoice;
        self.base_dir
            .get_or_insert_with(|| config.manager.base_dir.clone());
        if self.vmm.is_none() {
            self.vmm = Some(
                match config.vmm.vmm {
                    VmmChoice::Firecracker => "firecracker",
                    VmmChoice::Qemu | VmmChoice::Auto => "qemu",
                }
                .into(),
            );
        }
        self
    }

    /// Refuses flag values the soak cannot run with.
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.minutes.is_finite() && self.minutes > 0.0,
            "--minutes must be a positive number (got {})",
            self.minutes
        );
        ensure!(self.clients >= 1, "--clients must be at least 1");
        ensure!(self.sample_sec >= 1, "--sample-sec must be at least 1");
        Ok(())
    }

    /// The base directory (set by [`Self::resolve`]).
    fn base_dir(&self) -> PathBuf {
        self.base_dir.clone().unwrap_or_default()
    }

    /// The image directory.
    fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.base_dir().join("images").join("default"))
    }

    /// How long clients start new cycles.
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.minutes * 60.0)
    }
}

/// Runs the soak (blocking: it builds its own Tokio runtime).
///
/// # Errors
/// When the server cannot be started or reached, the JSON file cannot be
/// written, or the soak found a failed request or a leak (the reasons are
/// printed and in the error).
pub fn run(args: SoakArgs, config: &locale2b_config::Config) -> anyhow::Result<()> {
    let args = args.resolve(config);
    args.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

/// What one cycle's requests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `POST /sandboxes`.
    Create,
    /// `POST /sandboxes/{id}/exec` of an `echo`.
    Exec,
    /// `POST …/files/write`.
    FileWrite,
    /// `GET …/files/read`, bytes compared.
    FileRead,
    /// `GET …/files/stat`.
    FileStat,
    /// `GET …/files/list`.
    FileList,
    /// `POST …/processes`.
    ProcessStart,
    /// `GET …/processes/{pid}/output`.
    ProcessOutput,
    /// `DELETE …/processes/{pid}`.
    ProcessRemove,
    /// `GET /sandboxes/{id}`.
    SandboxGet,
    /// `GET /sandboxes`.
    SandboxList,
    /// `POST …/pause`.
    Pause,
    /// `POST …/resume`.
    Resume,
    /// `DELETE /sandboxes/{id}`.
    Destroy,
}

impl Kind {
    /// Every kind, in cycle order.
    const ALL: [Self; 14] = [
        Self::Create,
        Self::Exec,
        Self::FileWrite,
        Self::FileRead,
        Self::FileStat,
        Self::FileList,
        Self::ProcessStart,
        Self::ProcessOutput,
        Self::ProcessRemove,
        Self::SandboxGet,
        Self::SandboxList,
        Self::Pause,
        Self::Resume,
        Self::Destroy,
    ];

    /// Stable name in the table and the JSON.
    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Exec => "exec",
            Self::FileWrite => "files.write",
            Self::FileRead => "files.read",
            Self::FileStat => "files.stat",
            Self::FileList => "files.list",
            Self::ProcessStart => "process.start",
            Self::ProcessOutput => "process.output",
            Self::ProcessRemove => "process.remove",
            Self::SandboxGet => "sandbox.get",
            Self::SandboxList => "sandbox.list",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Destroy => "destroy",
        }
    }
}

/// Outcomes of the requests of one kind.
#[derive(Debug, Default)]
struct KindCount {
    /// Requests that succeeded and passed their check.
    ok: usize,
    /// Requests that failed or failed their check.
    failed: usize,
    /// Round-trip times of the successful ones, ms.
    ms: Vec<f64>,
}

/// One sample of the server's resident memory.
#[derive(Debug, Clone, Copy, Serialize)]
struct RssSample {
    /// Seconds since the load started.
    t_s: f64,
    /// VmRSS, MiB.
    mb: f64,
    /// Taken after every client finished its first cycle.
    warm: bool,
}

/// The state shared by the client loops.
struct Soak {
    api: Api,
    memory_mb: u32,
    execs: usize,
    clients: usize,
    /// When clients stop starting cycles.
    deadline: Instant,
    /// When the load started.
    started: Instant,
    /// Set on Ctrl-C: clients stop after their current cycle.
    stop: AtomicBool,
    counts: Mutex<BTreeMap<Kind, KindCount>>,
    /// The first [`MAX_ERRORS`] failures, described.
    errors: Mutex<Vec<String>>,
    /// Sandboxes running now, and every workspace a create answered.
    tracker: Tracker,
    /// Every sandbox id ever created (leak check with `--url`).
    created: Mutex<BTreeSet<String>>,
    cycles: AtomicUsize,
    clean_cycles: AtomicUsize,
    /// Clients that finished their first cycle (the warm-up).
    warmed: AtomicUsize,
}

/// Where a client is, for the log lines.
struct Cycle {
    client: usize,
    n: usize,
    /// Failed requests in this cycle so far.
    failures: usize,
}

/// Locks `m`, also when a panicking thread poisoned it (the data are
/// counters and lists; a half-done update is still worth reporting).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// 16 random hex digits.
fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `n` random bytes.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

impl Soak {
    /// Runs one request (`fut`, whose error includes a failed check), times
    /// it and counts its outcome under `kind`; a failure is logged.
    async fn step<T>(
        &self,
        cy: &mut Cycle,
        kind: Kind,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> Option<T> {
        let t = Instant::now();
        let r = fut.await;
        let ms = ms_since(t);
        let mut counts = lock(&self.counts);
        let c = counts.entry(kind).or_default();
        match r {
            Ok(v) => {
                c.ok += 1;
                c.ms.push(ms);
                Some(v)
            }
            Err(e) => {
                c.failed += 1;
                drop(counts);
                cy.failures += 1;
                let line = format!(
                    "client {} cycle {}: {} failed after {:.0} ms: {}",
                    cy.client,
                    cy.n,
                    kind.name(),
                    ms,
                    err_note(&format!("{e:#}"))
                );
                eprintln!("soak: {line}");
                let mut errors = lock(&self.errors);
                if errors.len() < MAX_ERRORS {
                    errors.push(line);
                }
                None
            }
        }
    }

    /// Requests so far and how many failed.
    fn totals(&self) -> (usize, usize) {
        lock(&self.counts)
            .values()
            .fold((0, 0), |(n, f), c| (n + c.ok + c.failed, f + c.failed))
    }

    /// One client's loop: cycles until the deadline (or Ctrl-C).
    async fn client(self: Arc<Self>, client: usize) {
        let mut n = 0;
        while Instant::now() < self.deadline && !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let t = Instant::now();
            let mut cy = Cycle {
                client,
                n,
                failures: 0,
            };
            self.cycle(&mut cy).await;
            self.cycles.fetch_add(1, Ordering::Relaxed);
            if cy.failures == 0 {
                self.clean_cycles.fetch_add(1, Ordering::Relaxed);
            } else {
                eprintln!(
                    "soak: client {client} cycle {n}: {} failed request(s) in {:.1} s",
                    cy.failures,
                    t.elapsed().as_secs_f64()
                );
            }
            if n == 1 {
                let warmed = self.warmed.fetch_add(1, Ordering::Relaxed) + 1;
                eprintln!(
                    "soak: client {client}: first cycle in {:.1} s ({warmed}/{} warmed up)",
                    t.elapsed().as_secs_f64(),
                    self.clients
                );
            }
        }
    }

    /// One cycle: create, execs, a file, a background process, get and list,
    /// pause, resume, checks after resume, destroy. Steps that cannot run
    /// because an earlier one failed are skipped, not counted.
    async fn cycle(&self, cy: &mut Cycle) {
        let Some(mut id) = self.create(cy).await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            return;
        };
        for i in 0..self.execs {
            self.exec_echo(cy, &id, i).await;
        }
        let tok = token();
        let path = format!("/workspace/soak-{tok}.bin");
        let content = random_bytes(FILE_BYTES);
        let written = self.write_file(cy, &id, &path, &content).await;
        if written {
            self.read_file(cy, &id, &path, &content).await;
            self.stat_file(cy, &id, &path).await;
        }
        self.list_files(cy, &id, written.then_some(&path)).await;
        self.process(cy, &id).await;
        self.get_sandbox(cy, &id, "running").await;
        self.list_sandboxes(cy, &id).await;
        if self.pause(cy, &id).await {
            self.get_sandbox(cy, &id, "paused").await;
            if let Some(new) = self.resume(cy, &id).await {
                id = new;
                self.exec_echo(cy, &id, self.execs).await;
                if written {
                    self.read_file(cy, &id, &path, &content).await;
                }
            }
        }
        self.destroy(cy, &id).await;
    }

    /// `POST /sandboxes`; the new sandbox is tracked until destroyed.
    async fn create(&self, cy: &mut Cycle) -> Option<String> {
        let body = json!({ "memory_mb": self.memory_mb });
        self.step(cy, Kind::Create, async {
            let t = self.api.post("/sandboxes", &body, CREATE_TIMEOUT).await?;
            let id = str_field(&t.body, "sandbox_id")?.to_owned();
            self.tracker.add(&id);
            lock(&self.created).insert(id.clone());
            if let Some(ws) = t.body.get("workspace_id").and_then(Value::as_str) {
                self.tracker.add_workspace(ws);
            }
            let status = t.body.get("status").and_then(Value::as_str);
            ensure!(
                status == Some("running"),
                "created sandbox {id} is {status:?}"
            );
            Ok(id)
        })
        .await
    }

    /// An `echo` of a random token; stdout and exit code checked.
    async fn exec_echo(&self, cy: &mut Cycle, id: &str, i: usize) {
        let want = format!("{}-{i}", token());
        let body = json!({ "command": format!("echo {want}") });
        self.step(cy, Kind::Exec, async {
            let t = self
                .api
                .post(&format!("/sandboxes/{id}/exec"), &body, OP_TIMEOUT)
                .await?;
            let stdout = t.body.get("stdout").and_then(Value::as_str);
            ensure!(
                stdout == Some(&format!("{want}\n")),
                "echo {want} printed {stdout:?}: {}",
                t.body
            );
            ensure!(
                t.body.get("exit_code").and_then(Value::as_i64) == Some(0),
                "echo did not exit 0: {}",
                t.body
            );
            Ok(())
        })
        .await;
    }

    /// `POST files/write` of `content`; the answered size checked.
    async fn write_file(&self, cy: &mut Cycle, id: &str, path: &str, content: &[u8]) -> bool {
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        let body = json!({ "path": path, "content": encoded });
        self.step(cy, Kind::FileWrite, async {
            let t = self
                .api
                .post(&format!("/sandboxes/{id}/files/write"), &body, OP_TIMEOUT)
                .await?;
            let size = t.body.get("size").and_then(Value::as_u64);
            ensure!(
                size == Some(content.len() as u64),
                "wrote {size:?} bytes of {}",
                content.len()
            );
            Ok(())
        })
        .await
        .is_some()
    }

    /// `GET files/read`; the bytes compared with `content`.
    async fn read_file(&self, cy: &mut Cycle, id: &str, path: &str, content: &[u8]) {
        self.step(cy, Kind::FileRead, async {
            let t = self
                .api
                .get(&format!("/sandboxes/{id}/files/read?path={path}"))
                .await?;
            let got = t
                .body
                .get("content")
                .and_then(Value::as_str)
                .context("answer has no content")?;
            let got = base64::engine::general_purpose::STANDARD
                .decode(got)
                .context("content is not base64")?;
            ensure!(
                got == content,
                "read {} bytes that differ from the {} written",
                got.len(),
                content.len()
            );
            Ok(())
        })
        .await;
    }

    /// `GET files/stat`; type and size checked.
    async fn stat_file(&self, cy: &mut Cycle, id: &str, path: &str) {
        self.step(cy, Kind::FileStat, async {
            let t = self
                .api
                .get(&format!("/sandboxes/{id}/files/stat?path={path}"))
                .await?;
            ensure!(
                t.body.get("type").and_then(Value::as_str) == Some("file")
                    && t.body.get("size").and_then(Value::as_u64) == Some(FILE_BYTES as u64),
                "stat of a {FILE_BYTES}-byte file answered {}",
                t.body
            );
            Ok(())
        })
        .await;
    }

    /// `GET files/list` of /workspace; the file written (if any) must be in it.
    async fn list_files(&self, cy: &mut Cycle, id: &str, path: Option<&String>) {
        self.step(cy, Kind::FileList, async {
            let t = self
                .api
                .get(&format!("/sandboxes/{id}/files/list?path=/workspace"))
                .await?;
            let files = t
                .body
                .get("files")
                .and_then(Value::as_array)
                .context("answer has no files list")?;
            if let Some(path) = path {
                ensure!(
                    files
                        .iter()
                        .any(|f| f.get("path").and_then(Value::as_str) == Some(path.as_str())),
                    "{path} is not in the list of {} entries",
                    files.len()
                );
            }
            Ok(())
        })
        .await;
    }

    /// A background process printing two lines: start, its output read by
    /// cursor until complete (checked), then removed.
    async fn process(&self, cy: &mut Cycle, id: &str) {
        let tok = token();
        let want = format!("{tok}\ndone-{tok}\n");
        let body = json!({
            "command": format!("echo {tok}; sleep 0.2; echo done-{tok}"),
            "stdin": false,
        });
        let Some(pid) = self
            .step(cy, Kind::ProcessStart, async {
                let t = self
                    .api
                    .post(&format!("/sandboxes/{id}/processes"), &body, OP_TIMEOUT)
                    .await?;
                t.body
                    .get("pid")
                    .and_then(Value::as_u64)
                    .with_context(|| format!("answer has no pid: {}", t.body))
            })
            .await
        else {
            return;
        };
        let deadline = Instant::now() + PROCESS_WAIT;
        let mut out = String::new();
        let mut cursor = 0u64;
        loop {
            let polled = self
                .step(cy, Kind::ProcessOutput, async {
                    let t = self
                        .api
                        .get(&format!(
                            "/sandboxes/{id}/processes/{pid}/output?cursor={cursor}"
                        ))
                        .await?;
                    out.push_str(t.body.get("stdout").and_then(Value::as_str).unwrap_or(""));
                    cursor = t
                        .body
                        .get("next_cursor")
                        .and_then(Value::as_u64)
                        .with_context(|| format!("answer has no next_cursor: {}", t.body))?;
                    let complete = t.body.get("complete").and_then(Value::as_bool) == Some(true);
                    if complete {
                        ensure!(out == want, "the process printed {out:?}, not {want:?}");
                        let code = t.body.get("exit_code").and_then(Value::as_i64);
                        ensure!(code == Some(0), "the process exited with {code:?}");
                    } else {
                        ensure!(
                            Instant::now() < deadline,
                            "output not complete after {PROCESS_WAIT:?}; so far {out:?}"
                        );
                    }
                    Ok(complete)
                })
                .await;
            match polled {
                Some(false) => tokio::time::sleep(POLL_INTERVAL).await,
                Some(true) | None => break,
            }
        }
        self.step(cy, Kind::ProcessRemove, async {
            self.api
                .delete(&format!("/sandboxes/{id}/processes/{pid}"), OP_TIMEOUT)
                .await?;
            Ok(())
        })
        .await;
    }

    /// `GET /sandboxes/{id}`; its status must be `status`.
    async fn get_sandbox(&self, cy: &mut Cycle, id: &str, status: &str) {
        self.step(cy, Kind::SandboxGet, async {
            let t = self.api.get(&format!("/sandboxes/{id}")).await?;
            let got = t.body.get("status").and_then(Value::as_str);
            ensure!(got == Some(status), "sandbox is {got:?}, expected {status}");
            Ok(())
        })
        .await;
    }

    /// `GET /sandboxes`; `id` must be in it.
    async fn list_sandboxes(&self, cy: &mut Cycle, id: &str) {
        self.step(cy, Kind::SandboxList, async {
            let t = self.api.get("/sandboxes").await?;
            let ids = listed_ids(&t.body, "sandboxes", "sandbox_id");
            ensure!(
                ids.iter().any(|s| s == id),
                "{id} is not among the {} listed",
                ids.len()
            );
            Ok(())
        })
        .await;
    }

    /// `POST …/pause`; true when the answer says `paused`.
    async fn pause(&self, cy: &mut Cycle, id: &str) -> bool {
        self.step(cy, Kind::Pause, async {
            let t = self
                .api
                .post(
                    &format!("/sandboxes/{id}/pause"),
                    &json!({}),
                    LIFECYCLE_TIMEOUT,
                )
                .await?;
            let status = t.body.get("status").and_then(Value::as_str);
            ensure!(status == Some("paused"), "pause answered status {status:?}");
            Ok(())
        })
        .await
        .is_some()
    }

    /// `POST …/resume`; the (possibly new) sandbox id when it runs again.
    async fn resume(&self, cy: &mut Cycle, id: &str) -> Option<String> {
        self.step(cy, Kind::Resume, async {
            let t = self
                .api
                .post(
                    &format!("/sandboxes/{id}/resume"),
                    &json!({}),
                    CREATE_TIMEOUT,
                )
                .await?;
            let new = t
                .body
                .get("sandbox_id")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned();
            if new != id {
                self.tracker.remove(id);
                self.tracker.add(&new);
                lock(&self.created).insert(new.clone());
            }
            let status = t.body.get("status").and_then(Value::as_str);
            ensure!(
                status == Some("running"),
                "resume answered status {status:?}"
            );
            Ok(new)
        })
        .await
    }

    /// `DELETE /sandboxes/{id}`; untracked when gone (a 404 still counts as
    /// a failure: the soak did not destroy it).
    async fn destroy(&self, cy: &mut Cycle, id: &str) {
        self.step(cy, Kind::Destroy, async {
            let r = self
                .api
                .delete(&format!("/sandboxes/{id}"), LIFECYCLE_TIMEOUT)
                .await;
            if r.is_ok() || r.as_ref().err().and_then(|e| e.status()) == Some(StatusCode::NOT_FOUND)
            {
                self.tracker.remove(id);
            }
            r?;
            Ok(())
        })
        .await;
    }

    /// Destroys whatever the clients left running (after failed destroys
    /// or an interrupted cycle). Returns the ids that could not be destroyed.
    async fn cleanup(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for id in self.tracker.sandboxes() {
            eprintln!("soak: cleanup: destroying {id}");
            match self
                .api
                .delete(&format!("/sandboxes/{id}"), LIFECYCLE_TIMEOUT)
                .await
            {
                Ok(_) => self.tracker.remove(&id),
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => self.tracker.remove(&id),
                Err(e) => {
                    eprintln!("soak: cleanup: cannot destroy {id}: {e}");
                    failed.push(id);
                }
            }
        }
        failed
    }

    /// Sandboxes and workspaces the server still lists that the soak made
    /// (`all`: every one listed, the server being the soak's own).
    async fn leftovers(&self, all: bool) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let sandboxes = listed_ids(
            &self
                .api
                .get("/sandboxes")
                .await
                .context("GET /sandboxes failed")?
                .body,
            "sandboxes",
            "sandbox_id",
        );
        let workspaces = listed_ids(
            &self
                .api
                .get("/workspaces")
                .await
                .context("GET /workspaces failed")?
                .body,
            "workspaces",
            "workspace_id",
        );
        let created = lock(&self.created).clone();
        let ours: BTreeSet<String> = self.tracker.workspaces().into_iter().collect();
        Ok((
            sandboxes
                .into_iter()
                .filter(|s| all || created.contains(s))
                .collect(),
            workspaces
                .into_iter()
                .filter(|w| all || ours.contains(w))
                .collect(),
        ))
    }

    /// Per-kind rows for the report.
    fn rows(&self) -> Vec<KindRow> {
        let counts = lock(&self.counts);
        Kind::ALL
            .iter()
            .map(|k| {
                let c = counts.get(k);
                KindRow {
                    kind: k.name(),
                    requests: c.map_or(0, |c| c.ok + c.failed),
                    failed: c.map_or(0, |c| c.failed),
                    latency_ms: c.and_then(|c| Summary::of(&c.ms)),
                }
            })
            .collect()
    }
}

/// The `id_field` of every object in the `list_field` array of `v`.
fn listed_ids(v: &Value, list_field: &str, id_field: &str) -> Vec<String> {
    v.get(list_field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get(id_field).and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(Iterator::count)
}

/// Samples the server's RSS every `every` until `done` is notified, and
/// prints a progress line every [`PROGRESS_EVERY`].
async fn sample_rss(
    soak: Arc<Soak>,
    pid: Option<u32>,
    every: Duration,
    total: Duration,
    done: Arc<tokio::sync::Notify>,
) -> Vec<RssSample> {
    let mut samples = Vec::new();
    let mut last_progress = Instant::now();
    loop {
        let warm = soak.warmed.load(Ordering::Relaxed) >= soak.clients;
        let rss = pid.and_then(server::rss_kib).map(kib_to_mib);
        if let Some(mb) = rss {
            samples.push(RssSample {
                t_s: soak.started.elapsed().as_secs_f64(),
                mb,
                warm,
            });
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let (n, failed) = soak.totals();
            eprintln!(
                "soak: {:.1}/{:.1} min: {} cycles, {n} requests, {failed} failed, server RSS {}",
                soak.started.elapsed().as_secs_f64() / 60.0,
                total.as_secs_f64() / 60.0,
                soak.cycles.load(Ordering::Relaxed),
                rss.map_or_else(|| "not measured".to_owned(), |mb| format!("{mb:.1} MiB"))
            );
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = done.notified() => break,
        }
    }
    samples
}

/// Requests of one kind, for the report.
#[derive(Debug, Clone, Serialize)]
struct KindRow {
    /// [`Kind::name`].
    kind: &'static str,
    /// Requests sent.
    requests: usize,
    /// Of which failed (error, no answer, or a failed check).
    failed: usize,
    /// Latency of the successful ones, ms.
    latency_ms: Option<Summary>,
}

/// Cycle counts.
#[derive(Debug, Clone, Copy, Serialize)]
struct Cycles {
    /// Cycles run to their end.
    completed: usize,
    /// Of which without a failed request.
    clean: usize,
}

/// The server's memory over the run.
#[derive(Debug, Clone, Serialize)]
struct RssReport {
    /// Every sample, in order.
    samples: Vec<RssSample>,
    /// Before the load, MiB.
    start_mb: Option<f64>,
    /// First sample after the warm-up (every client's first cycle), MiB.
    first_mb: Option<f64>,
    /// Largest sample, MiB.
    max_mb: Option<f64>,
    /// Last sample under load, MiB.
    last_mb: Option<f64>,
    /// After the cleanup, MiB.
    after_cleanup_mb: Option<f64>,
    /// `first * 1.5 + 20 MiB`: the last sample may not exceed it.
    limit_mb: Option<f64>,
    /// `last <= limit`; null when not measured.
    flat: Option<bool>,
    /// Why it was not measured, or how.
    note: String,
}

impl RssReport {
    /// Figures and verdict from the samples; `start` and `after` were taken
    /// before the load and after the cleanup.
    fn new(samples: Vec<RssSample>, start: Option<f64>, after: Option<f64>, note: String) -> Self {
        let first = samples
            .iter()
            .find(|s| s.warm)
            .or_else(|| samples.last())
            .map(|s| s.mb);
        let last = samples.last().map(|s| s.mb);
        let max = samples.iter().map(|s| s.mb).reduce(f64::max);
        let limit = first.map(|f| f * RSS_FACTOR + RSS_SLACK_MIB);
        let flat = match (last, limit) {
            (Some(l), Some(lim)) => Some(l <= lim),
            _ => None,
        };
        Self {
            samples,
            start_mb: start,
            first_mb: first,
            max_mb: max,
            last_mb: last,
            after_cleanup_mb: after,
            limit_mb: limit,
            flat,
            note,
        }
    }
}

/// The server's open files before and after.
#[derive(Debug, Clone, Serialize)]
struct FdReport {
    /// Before the load.
    before: Option<usize>,
    /// After the cleanup, with the soak's connections closed.
    after: Option<usize>,
    /// Growth allowed.
    tolerance: usize,
    /// `after <= before + tolerance`; null when not measured.
    ok: Option<bool>,
}

/// Disk use of one directory.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct DirUse {
    /// Allocated bytes of the files under it; null when unreadable.
    bytes: Option<u64>,
    /// Entries directly in it; null when unreadable.
    entries: Option<usize>,
}

impl DirUse {
    /// Measures `dir`.
    fn of(dir: &Path) -> Self {
        Self {
            bytes: allocated_bytes(dir),
            entries: std::fs::read_dir(dir).ok().map(Iterator::count),
        }
    }

    /// Whether `self` (after) is back to `before` or below; `None` when
    /// neither could be read.
    fn returned_to(self, before: Self) -> Option<bool> {
        if self.bytes.is_none() && before.bytes.is_none() {
            return None;
        }
        Some(
            self.bytes.unwrap_or(0) <= before.bytes.unwrap_or(0)
                && self.entries.unwrap_or(0) <= before.entries.unwrap_or(0),
        )
    }
}

/// One directory before and after.
#[derive(Debug, Clone, Copy, Serialize)]
struct DirCheck {
    /// Before the load.
    before: DirUse,
    /// After the cleanup.
    after: DirUse,
    /// Back to the start value; null when not measured.
    ok: Option<bool>,
}

impl DirCheck {
    /// Compares.
    fn new(before: DirUse, after: DirUse) -> Self {
        Self {
            before,
            after,
            ok: after.returned_to(before),
        }
    }
}

/// Disk use under the base directory.
#[derive(Debug, Clone, Copy, Serialize)]
struct DiskReport {
    /// `<base>/sandboxes`.
    sandboxes: DirCheck,
    /// `<base>/workspaces` (disks, snapshots).
    workspaces: DirCheck,
}

/// Everything a soak produces (`--json`).
#[derive(Debug, Clone, Serialize)]
struct SoakReport {
    /// Always `soak`.
    kind: &'static str,
    /// [`SOAK_SCHEMA_VERSION`].
    schema_version: u32,
    /// Start time, RFC 3339 (UTC).
    started_at: String,
    /// Whole run, seconds.
    duration_s: f64,
    /// From the first to the last request of the clients, seconds.
    load_s: f64,
    /// Host, server and image.
    environment: Environment,
    /// Flags the run used.
    settings: Value,
    /// Requests by kind.
    requests: Vec<KindRow>,
    /// All requests.
    requests_total: usize,
    /// All failed requests.
    requests_failed: usize,
    /// Cycles.
    cycles: Cycles,
    /// The first failures, described.
    errors: Vec<String>,
    /// Server memory.
    rss: RssReport,
    /// Server open files.
    fds: FdReport,
    /// Processes mentioning the base directory after the cleanup that were
    /// not there before it (VMMs and helpers).
    vmm_processes_left: Vec<String>,
    /// Processes the own server's stop had to kill.
    killed_at_stop: Vec<String>,
    /// Disk use; null without a readable base directory.
    disk: Option<DiskReport>,
    /// Sandboxes the soak could not destroy at its cleanup.
    cleanup_failed: Vec<String>,
    /// Sandboxes still listed by the server at the end.
    leftover_sandboxes: Vec<String>,
    /// Workspaces still listed by the server at the end.
    leftover_workspaces: Vec<String>,
    /// Checks that could not be made, and why.
    not_measured: Vec<String>,
    /// Ctrl-C stopped the soak early.
    interrupted: bool,
    /// Why the soak failed (empty: passed).
    failures: Vec<String>,
    /// No failure.
    passed: bool,
}

/// Why the soak fails: failed requests and every leak found.
fn failures(r: &SoakReport) -> Vec<String> {
    let mut f = Vec::new();
    if r.requests_failed > 0 {
        let kinds: Vec<String> = r
            .requests
            .iter()
            .filter(|k| k.failed > 0)
            .map(|k| format!("{} {}", k.kind, k.failed))
            .collect();
        f.push(format!(
            "{} of {} requests failed ({})",
            r.requests_failed,
            r.requests_total,
            kinds.join(", ")
        ));
    }
    if r.cycles.completed == 0 {
        f.push("no cycle completed".into());
    }
    if r.rss.flat == Some(false) {
        f.push(format!(
            "server RSS not flat: {:.1} MiB at the end of the load, above {:.1} MiB (first {:.1} MiB after warm-up x {RSS_FACTOR} + {RSS_SLACK_MIB} MiB)",
            r.rss.last_mb.unwrap_or(0.0),
            r.rss.limit_mb.unwrap_or(0.0),
            r.rss.first_mb.unwrap_or(0.0)
        ));
    }
    if r.fds.ok == Some(false) {
        f.push(format!(
            "server open files grew from {} to {} (tolerance {})",
            r.fds.before.unwrap_or(0),
            r.fds.after.unwrap_or(0),
            r.fds.tolerance
        ));
    }
    if !r.vmm_processes_left.is_empty() {
        f.push(format!(
            "{} VMM process(es) left: {}",
            r.vmm_processes_left.len(),
            r.vmm_processes_left.join("; ")
        ));
    }
    if !r.killed_at_stop.is_empty() {
        f.push(format!(
            "{} process(es) killed after the server stopped",
            r.killed_at_stop.len()
        ));
    }
    if let Some(d) = &r.disk {
        for (name, c) in [("sandboxes/", &d.sandboxes), ("workspaces/", &d.workspaces)] {
            if c.ok == Some(false) {
                f.push(format!(
                    "disk use of {name} not returned: {} -> {}",
                    dir_use_text(c.before),
                    dir_use_text(c.after)
                ));
            }
        }
    }
    if !r.cleanup_failed.is_empty() {
        f.push(format!(
            "cannot destroy at cleanup: {}",
            r.cleanup_failed.join(", ")
        ));
    }
    if !r.leftover_sandboxes.is_empty() {
        f.push(format!(
            "sandboxes still listed: {}",
            r.leftover_sandboxes.join(", ")
        ));
    }
    if !r.leftover_workspaces.is_empty() {
        f.push(format!(
            "workspaces still listed: {}",
            r.leftover_workspaces.join(", ")
        ));
    }
    if r.interrupted {
        f.push("interrupted".into());
    }
    f
}

/// `1.2 MiB (3 entries)`.
fn dir_use_text(d: DirUse) -> String {
    let bytes = d.bytes.map_or_else(
        || "unreadable".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    );
    match d.entries {
        Some(n) => format!("{bytes} ({n} entries)"),
        None => bytes,
    }
}

/// `ok`, `LEAK` or `not measured`.
fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "ok",
        Some(false) => "LEAK",
        None => "not measured",
    }
}

/// A latency cell.
fn ms_cell(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

/// A MiB figure or `n/a`.
fn mb_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.1} MiB"))
}

/// The table and the check lines printed at the end.
fn render(r: &SoakReport) -> String {
    let mut out = String::new();
    let e = &r.environment;
    let _ = writeln!(
        out,
        "locale2b bench soak {} | backend {} ({}) | {} clients x {:.1} min | {} x {} | {:.0} s",
        e.locale2b_version,
        e.backend.as_deref().unwrap_or("?"),
        e.accel.as_deref().unwrap_or("?"),
        r.settings["clients"],
        r.settings["minutes"].as_f64().unwrap_or(0.0),
        e.cpu_count,
        e.cpu_model.as_deref().unwrap_or("?"),
        r.duration_s
    );
    out.push('\n');
    let header = ["kind", "requests", "failed", "p50 ms", "p95 ms", "max ms"];
    let mut rows: Vec<[String; 6]> = r
        .requests
        .iter()
        .map(|k| {
            [
                k.kind.to_owned(),
                k.requests.to_string(),
                k.failed.to_string(),
                ms_cell(k.latency_ms.map(|s| s.p50)),
                ms_cell(k.latency_ms.map(|s| s.p95)),
                ms_cell(k.latency_ms.map(|s| s.max)),
            ]
        })
        .collect();
    rows.push([
        "total".into(),
        r.requests_total.to_string(),
        r.requests_failed.to_string(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6], out: &mut String| {
        out.push('|');
        for (i, c) in cells.iter().enumerate() {
            let w = width[i];
            if i == 0 {
                let _ = write!(out, " {c:<w$} |");
            } else {
                let _ = write!(out, " {c:>w$} |");
            }
        }
        out.push('\n');
    };
    line(header, &mut out);
    let dashes: Vec<String> = (0..6)
        .map(|i| {
            if i == 0 {
                "-".repeat(width[i])
            } else {
                format!("{}:", "-".repeat(width[i] - 1))
            }
        })
        .collect();
    line(std::array::from_fn(|i| dashes[i].as_str()), &mut out);
    for row in &rows {
        line(std::array::from_fn(|i| row[i].as_str()), &mut out);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "cycles: {} completed, {} without a failed request",
        r.cycles.completed, r.cycles.clean
    );
    let rss = &r.rss;
    if rss.samples.is_empty() {
        let _ = writeln!(out, "server RSS: not measured ({})", rss.note);
    } else {
        let _ = writeln!(
            out,
            "server RSS: start {}, first after warm-up {}, max {}, last {}, after cleanup {}; limit {} ({} samples): {}",
            mb_cell(rss.start_mb),
            mb_cell(rss.first_mb),
            mb_cell(rss.max_mb),
            mb_cell(rss.last_mb),
            mb_cell(rss.after_cleanup_mb),
            mb_cell(rss.limit_mb),
            rss.samples.len(),
            if rss.flat == Some(false) { "NOT FLAT" } else { "flat" }
        );
    }
    let fd = |v: Option<usize>| v.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let _ = writeln!(
        out,
        "server open files: {} before, {} after (tolerance {}): {}",
        fd(r.fds.before),
        fd(r.fds.after),
        r.fds.tolerance,
        verdict(r.fds.ok)
    );
    let _ = writeln!(
        out,
        "VMM processes left: {}; killed at server stop: {}: {}",
        r.vmm_processes_left.len(),
        r.killed_at_stop.len(),
        verdict(Some(
            r.vmm_processes_left.is_empty() && r.killed_at_stop.is_empty()
        ))
    );
    match &r.disk {
        Some(d) => {
            for (name, c) in [("sandboxes/", &d.sandboxes), ("workspaces/", &d.workspaces)] {
                let _ = writeln!(
                    out,
                    "disk {name}: {} before, {} after: {}",
                    dir_use_text(c.before),
                    dir_use_text(c.after),
                    verdict(c.ok)
                );
            }
        }
        None => {
            let _ = writeln!(out, "disk: not measured");
        }
    }
    let _ = writeln!(
        out,
        "left on the server: {} sandboxes, {} workspaces; cleanup failures {}: {}",
        r.leftover_sandboxes.len(),
        r.leftover_workspaces.len(),
        r.cleanup_failed.len(),
        verdict(Some(
            r.leftover_sandboxes.is_empty()
                && r.leftover_workspaces.is_empty()
                && r.cleanup_failed.is_empty()
        ))
    );
    for n in &r.not_measured {
        let _ = writeln!(out, "not measured: {n}");
    }
    if r.passed {
        let _ = writeln!(out, "result: PASS");
    } else {
        let _ = writeln!(out, "result: FAIL: {}", r.failures.join("; "));
    }
    out
}

/// PIDs of the processes mentioning `dir` (none when `dir` is empty).
fn pids_mentioning(dir: &Path) -> BTreeMap<u32, String> {
    if dir.as_os_str().is_empty() {
        return BTreeMap::new();
    }
    server::processes_mentioning(dir).into_iter().collect()
}

async fn run_async(args: SoakArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let image_dir = args.image_dir();
    let manifest = report::read_manifest(&image_dir);
    let mut not_measured = Vec::new();

    let mut own = None;
    let (url, key, base, server_pid) = match (&args.url, &args.api_key) {
        (Some(url), Some(key)) => {
            if args.server_pid.is_none() {
                not_measured.push("server RSS and open files (--url without --server-pid)".into());
            }
            (url.clone(), key.clone(), args.base_dir(), args.server_pid)
        }
        _ => {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("cannot find this executable")?,
            };
            let vmm = args.vmm.clone().unwrap_or_else(|| "qemu".into());
            eprintln!("soak: starting `{} serve` ({vmm})", bin.display());
            let slots = u32::try_from(args.clients + 2).unwrap_or(u32::MAX);
            let s = server::OwnServer::start(&server::ServerSpec {
                bin,
                image_dir: image_dir.clone(),
                vmm,
                max_sandboxes: slots,
                memory_budget_mb: (u64::from(slots) * u64::from(args.memory_mb)).max(512),
                start_timeout: Duration::from_secs(args.server_timeout_sec),
            })
            .await?;
            eprintln!(
                "soak: server at {} with base {} (pid {})",
                s.url,
                s.base.display(),
                s.pid().map_or_else(|| "?".into(), |p| p.to_string())
            );
            let t = (s.url.clone(), s.key.clone(), s.base.clone(), s.pid());
            own = Some(s);
            t
        }
    };

    let mut outcome = soak_against(
        &args,
        &url,
        &key,
        &base,
        server_pid,
        own.is_some(),
        &image_dir,
        manifest,
    )
    .await;
    // The verdict so far decides whether the server log is shown; the
    // server's stop can still add to it.
    if let Ok(r) = outcome.as_mut() {
        r.failures = failures(r);
        r.passed = r.failures.is_empty();
    }

    // Stop the own server whatever happened; keep its log when asked.
    let mut killed_at_stop = Vec::new();
    if let Some(s) = own.as_mut() {
        let failed = !matches!(&outcome, Ok(r) if r.passed);
        if failed {
            eprintln!("soak: server log (last 40 lines):\n{}", s.log_tail(40));
        }
        if let Some(path) = &args.server_log {
            match std::fs::copy(s.log_path(), path) {
                Ok(_) => eprintln!("soak: server log copied to {}", path.display()),
                Err(e) => eprintln!(
                    "soak: cannot copy the server log to {}: {e}",
                    path.display()
                ),
            }
        }
        killed_at_stop = s.stop().await;
        for p in &killed_at_stop {
            eprintln!("soak: killed leftover process {p}");
        }
    }
    let mut r = outcome?;
    r.started_at = started_at;
    r.killed_at_stop = killed_at_stop;
    r.duration_s = started.elapsed().as_secs_f64();
    r.not_measured.splice(0..0, not_measured);
    r.failures = failures(&r);
    r.passed = r.failures.is_empty();

    print!("{}", render(&r));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&r)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("soak: wrote {}", path.display());
    }
    if !r.passed {
        anyhow::bail!("soak failed: {}", r.failures.join("; "));
    }
    Ok(())
}

/// The load and every check against a running server; the caller stops
/// its own server afterwards.
#[allow(clippy::too_many_arguments)]
async fn soak_against(
    args: &SoakArgs,
    url: &str,
    key: &str,
    base: &Path,
    server_pid: Option<u32>,
    own_server: bool,
    image_dir: &Path,
    manifest: Option<Value>,
) -> anyhow::Result<SoakReport> {
    let mut not_measured = Vec::new();
    // A throwaway client, so the baseline has none of the soak's
    // connections open.
    let health = Api::new(url, key)?
        .get("/health")
        .await
        .context("GET /health failed")?
        .body;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = server_pid.and_then(open_fds);
    let rss_start = server_pid.and_then(server::rss_kib).map(kib_to_mib);
    let base_readable = base.join("sandboxes").is_dir() || base.join("workspaces").is_dir();
    if !base_readable {
        not_measured.push(format!(
            "disk use and VMM processes: no sandboxes/ or workspaces/ under {} (pass --base-dir)",
            base.display()
        ));
    }
    let procs_before = if base_readable {
        pids_mentioning(base)
    } else {
        BTreeMap::new()
    };
    let disk_before = base_readable.then(|| {
        (
            DirUse::of(&base.join("sandboxes")),
            DirUse::of(&base.join("workspaces")),
        )
    });
    eprintln!(
        "soak: backend {} ({}); {} clients for {:.1} min, {} MiB sandboxes; server RSS {}, open files {}",
        health.get("backend").and_then(Value::as_str).unwrap_or("?"),
        health.get("accel").and_then(Value::as_str).unwrap_or("?"),
        args.clients,
        args.minutes,
        args.memory_mb,
        mb_cell(rss_start),
        fds_before.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
    );

    let load_started = Instant::now();
    let soak = Arc::new(Soak {
        api: Api::new(url, key)?,
        memory_mb: args.memory_mb,
        execs: args.execs,
        clients: args.clients,
        deadline: load_started + args.duration(),
        started: load_started,
        stop: AtomicBool::new(false),
        counts: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(Vec::new()),
        tracker: Tracker::default(),
        created: Mutex::new(BTreeSet::new()),
        cycles: AtomicUsize::new(0),
        clean_cycles: AtomicUsize::new(0),
        warmed: AtomicUsize::new(0),
    });

    let interrupted = Arc::new(AtomicBool::new(false));
    let ctrl_c = {
        let soak = soak.clone();
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("soak: interrupted; stopping after the current cycles");
                interrupted.store(true, Ordering::Relaxed);
                soak.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let done = Arc::new(tokio::sync::Notify::new());
    let sampler = tokio::spawn(sample_rss(
        soak.clone(),
        server_pid,
        Duration::from_secs(args.sample_sec),
        args.duration(),
        done.clone(),
    ));
    let mut clients = tokio::task::JoinSet::new();
    for c in 1..=args.clients {
        clients.spawn(soak.clone().client(c));
    }
    let all_done = async {
        while let Some(r) = clients.join_next().await {
            if let Err(e) = r {
                eprintln!("soak: a client task failed: {e}");
            }
        }
    };
    if tokio::time::timeout(args.duration() + CLIENT_GRACE, all_done)
        .await
        .is_err()
    {
        eprintln!("soak: clients still busy {CLIENT_GRACE:?} after the end; aborting them");
        soak.stop.store(true, Ordering::Relaxed);
        clients.abort_all();
        while clients.join_next().await.is_some() {}
    }
    let load_s = load_started.elapsed().as_secs_f64();
    done.notify_one();
    let samples = match tokio::time::timeout(Duration::from_secs(30), sampler).await {
        Ok(Ok(s)) => s,
        _ => {
            eprintln!("soak: the RSS sampler did not stop");
            Vec::new()
        }
    };
    ctrl_c.abort();

    let (n, failed) = soak.totals();
    eprintln!(
        "soak: load done in {load_s:.0} s: {} cycles, {n} requests, {failed} failed; cleaning up",
        soak.cycles.load(Ordering::Relaxed)
    );
    let cleanup_failed = soak.cleanup().await;
    let (leftover_sandboxes, leftover_workspaces) = match soak.leftovers(own_server).await {
        Ok(l) => l,
        Err(e) => {
            not_measured.push(format!("sandboxes and workspaces left: {e:#}"));
            (Vec::new(), Vec::new())
        }
    };
    let requests = soak.rows();
    let errors = lock(&soak.errors).clone();
    let cycles = Cycles {
        completed: soak.cycles.load(Ordering::Relaxed),
        clean: soak.clean_cycles.load(Ordering::Relaxed),
    };
    // Close every connection of the soak before counting the server's files.
    drop(soak);

    let settle_until = Instant::now() + SETTLE_WAIT;
    let tolerance = args.fd_tolerance;
    let fds_after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server_pid.and_then(open_fds);
        let settled = match (now, fds_before) {
            (Some(a), Some(b)) => a <= b + tolerance,
            _ => true,
        };
        if settled || Instant::now() >= settle_until {
            break now;
        }
    };
    let vmm_left = loop {
        let left: Vec<String> = if base_readable {
            pids_mentioning(base)
                .into_iter()
                .filter(|(p, _)| !procs_before.contains_key(p))
                .map(|(p, cmd)| format!("pid {p}: {cmd}"))
                .collect()
        } else {
            Vec::new()
        };
        if left.is_empty() || Instant::now() >= settle_until {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let disk = disk_before.map(|(sb, ws)| DiskReport {
        sandboxes: DirCheck::new(sb, DirUse::of(&base.join("sandboxes"))),
        workspaces: DirCheck::new(ws, DirUse::of(&base.join("workspaces"))),
    });
    let rss_after = server_pid.and_then(server::rss_kib).map(kib_to_mib);
    let rss_note = if server_pid.is_some() {
        format!(
            "VmRSS of the server every {} s; flat when the last sample under load <= first after warm-up x {RSS_FACTOR} + {RSS_SLACK_MIB} MiB",
            args.sample_sec
        )
    } else {
        "no server pid (--url without --server-pid)".to_owned()
    };

    let requests_total = requests.iter().map(|k| k.requests).sum();
    let requests_failed = requests.iter().map(|k| k.failed).sum();
    Ok(SoakReport {
        kind: "soak",
        schema_version: SOAK_SCHEMA_VERSION,
        started_at: String::new(),
        duration_s: 0.0,
        load_s,
        environment: Environment::collect(Some(&health), image_dir, manifest, own_server),
        settings: json!({
            "minutes": args.minutes,
            "clients": args.clients,
            "execs": args.execs,
            "memory_mb": args.memory_mb,
            "sample_sec": args.sample_sec,
            "fd_tolerance": args.fd_tolerance,
            "file_bytes": FILE_BYTES,
        }),
        requests,
        requests_total,
        requests_failed,
        cycles,
        errors,
        rss: RssReport::new(samples, rss_start, rss_after, rss_note),
        fds: FdReport {
            before: fds_before,
            after: fds_after,
            tolerance,
            ok: match (fds_before, fds_after) {
                (Some(b), Some(a)) => Some(a <= b + tolerance),
                _ => None,
            },
        },
        vmm_processes_left: vmm_left,
        killed_at_stop: Vec::new(),
        disk,
        cleanup_failed,
        leftover_sandboxes,
        leftover_workspaces,
        not_measured,
        interrupted: interrupted.load(Ordering::Relaxed),
        failures: Vec::new(),
        passed: false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(t_s: f64, mb: f64, warm: bool) -> RssSample {
        RssSample { t_s, mb, warm }
    }

    #[test]
    fn rss_baseline_is_the_first_warm_sample() {
        let s = vec![
            sample(0.0, 10.0, false),
            sample(5.0, 30.0, true),
            sample(10.0, 50.0, true),
            sample(15.0, 60.0, true),
        ];
        let r = RssReport::new(s, Some(9.0), Some(40.0), String::new());
        assert_eq!(r.first_mb, Some(30.0));
        assert_eq!(r.max_mb, Some(60.0));
        assert_eq!(r.last_mb, Some(60.0));
        assert_eq!(r.limit_mb, Some(65.0));
        assert_eq!(r.flat, Some(true));
        let grew = vec![sample(5.0, 30.0, true), sample(10.0, 66.0, true)];
        assert_eq!(
            RssReport::new(grew, None, None, String::new()).flat,
            Some(false)
        );
        assert_eq!(
            RssReport::new(Vec::new(), None, None, String::new()).flat,
            None
        );
        // No warm sample: the last one is the baseline.
        let cold = vec![sample(0.0, 10.0, false), sample(5.0, 12.0, false)];
        assert_eq!(
            RssReport::new(cold, None, None, String::new()).first_mb,
            Some(12.0)
        );
    }

    #[test]
    fn disk_must_return_to_the_start() {
        let before = DirUse {
            bytes: Some(4096),
            entries: Some(1),
        };
        let same = DirUse {
            bytes: Some(4096),
            entries: Some(1),
        };
        let more = DirUse {
            bytes: Some(8192),
            entries: Some(1),
        };
        let extra_entry = DirUse {
            bytes: Some(0),
            entries: Some(2),
        };
        assert_eq!(same.returned_to(before), Some(true));
        assert_eq!(more.returned_to(before), Some(false));
        assert_eq!(extra_entry.returned_to(before), Some(false));
        assert_eq!(DirUse::default().returned_to(DirUse::default()), None);
        let real = tempfile::tempdir().unwrap();
        let empty = DirUse::of(real.path());
        std::fs::write(real.path().join("f"), vec![1u8; 8192]).unwrap();
        assert_eq!(DirUse::of(real.path()).returned_to(empty), Some(false));
    }

    #[test]
    fn lists_ids_of_an_answer() {
        let v = json!({"sandboxes": [{"sandbox_id": "sb-1"}, {"x": 1}, {"sandbox_id": "sb-2"}]});
        assert_eq!(listed_ids(&v, "sandboxes", "sandbox_id"), ["sb-1", "sb-2"]);
        assert!(listed_ids(&json!({}), "sandboxes", "sandbox_id").is_empty());
    }

    #[test]
    fn counts_open_files_of_this_process() {
        let n = open_fds(std::process::id()).unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds(std::process::id()).unwrap() > n);
        drop(f);
        assert_eq!(open_fds(u32::MAX), None);
    }

    fn empty_report() -> SoakReport {
        SoakReport {
            kind: "soak",
            schema_version: SOAK_SCHEMA_VERSION,
            started_at: String::new(),
            duration_s: 1.0,
            load_s: 1.0,
            environment: Environment::collect(None, Path::new("/x"), None, true),
            settings: json!({"clients": 2, "minutes": 1.0}),
            requests: vec![KindRow {
                kind: "exec",
                requests: 10,
                failed: 0,
                latency_ms: Summary::of(&[1.0, 2.0]),
            }],
            requests_total: 10,
            requests_failed: 0,
            cycles: Cycles {
                completed: 2,
                clean: 2,
            },
            errors: Vec::new(),
            rss: RssReport::new(vec![sample(1.0, 20.0, true)], None, None, String::new()),
            fds: FdReport {
                before: Some(10),
                after: Some(12),
                tolerance: 8,
                ok: Some(true),
            },
            vmm_processes_left: Vec::new(),
            killed_at_stop: Vec::new(),
            disk: None,
            cleanup_failed: Vec::new(),
            leftover_sandboxes: Vec::new(),
            leftover_workspaces: Vec::new(),
            not_measured: Vec::new(),
            interrupted: false,
            failures: Vec::new(),
            passed: true,
        }
    }

    #[test]
    fn a_clean_run_passes_and_every_leak_fails_it() {
        let r = empty_report();
        assert!(failures(&r).is_empty(), "{:?}", failures(&r));
        let t = render(&r);
        assert!(t.contains("| exec ") && t.contains("result: PASS"), "{t}");

        let mut r = empty_report();
        r.requests_failed = 1;
        r.requests[0].failed = 1;
        r.fds.ok = Some(false);
        r.vmm_processes_left = vec!["pid 1: qemu".into()];
        r.leftover_workspaces = vec!["ws".into()];
        r.rss = RssReport::new(
            vec![sample(1.0, 20.0, true), sample(2.0, 100.0, true)],
            None,
            None,
            String::new(),
        );
        let f = failures(&r);
        assert_eq!(f.len(), 5, "{f:?}");
        assert!(f[0].contains("exec 1"), "{f:?}");
        r.failures = f;
        r.passed = false;
        let t = render(&r);
        assert!(t.contains("result: FAIL") && t.contains("NOT FLAT"), "{t}");
    }
}
