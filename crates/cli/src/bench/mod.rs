//! `locale2b bench`: measures a real server booting real guests.
//!
//! Unless `--url` is given, the bench starts its own server (this executable
//! with `serve`) in a fresh temporary base directory whose `images/default`
//! links to the installed image, runs every phase against it, destroys
//! everything it created, stops the server, kills any process still
//! mentioning the temporary directory (and reports it), and removes the
//! directory. Every figure comes from measurements taken in this run.
//!
//! Phases: cold boot and destroy; a working sandbox for exec overhead, agent
//! round trips, file transfers, management API latency and pause/resume;
//! then density (fill a guest-RAM budget with small sandboxes). Output: a
//! table on stdout and, with `--json PATH`, the document described in
//! `docs/performance.md`. Progress goes to stderr.
//!
//! `locale2b bench soak` is a different run: a long mixed load, then leak
//! checks (see [`soak`]).

mod api;
mod baseline;
mod console;
mod ports;
mod report;
mod server;
mod soak;
mod stats;
mod streams;
mod templates;
mod transfer;

use anyhow::Context;
use api::{ms_since, str_field, Api, ApiError};
use base64::Engine as _;
use locale2b_agent_client::{AgentClient, ClientConfig};
use locale2b_manager::store::Store;
use rand::RngCore;
use report::{Density, Environment, Metric, Report};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Timeout of a create or resume call (TCG boots take seconds, more under load).
const CREATE_TIMEOUT: Duration = Duration::from_secs(180);
/// Timeout of a destroy or pause call.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of any other call.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Flags of `locale2b bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Benchmark this running server (e.g. http://127.0.0.1:8080) instead of
    /// starting one. Needs --api-key. Console logs, state files and snapshot
    /// sizes are read under --base-dir when it is the server's base dir.
    #[arg(long, requires = "api_key")]
    pub url: Option<String>,
    /// API key of the server given with --url.
    #[arg(long, requires = "url")]
    pub api_key: Option<String>,
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
    /// VMM backend of the bench's own server (default: the configured
    /// `vmm` when it is not `auto`, else qemu).
    #[arg(long)]
    pub vmm: Option<String>,
    /// Cold boots (each: create, read the console, destroy). Default 20, --quick 3.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Repetitions of each cheap operation (exec, ping, files, health, list).
    /// Default 50, --quick 10. 1 MiB transfers run half as often.
    #[arg(long)]
    pub ops: Option<usize>,
    /// Pause/resume cycles. Default 5, --quick 2.
    #[arg(long)]
    pub pause_cycles: Option<usize>,
    /// Guest-RAM budget the density test fills, MiB (0 = skip the test).
    /// Default 3072, --quick 1024.
    #[arg(long)]
    pub density_budget_mb: Option<u64>,
    /// Guest RAM of each density sandbox, MiB.
    #[arg(long, default_value_t = 256)]
    pub density_memory_mb: u32,
    /// Density sandboxes created at the same time.
    #[arg(long, default_value_t = 2)]
    pub density_batch: usize,
    /// Guest RAM of the cold-boot and working sandboxes, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: u32,
    /// Also pause and resume a sandbox of this much guest RAM (rows
    /// `pause.<n>mb.wall`, ...); skipped when equal to --memory-mb.
    #[arg(long, default_value = "512")]
    pub pause_memory_mb: Option<u32>,
    /// Small counts for a fast smoke run (about two minutes under TCG).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Seconds to wait for the bench's own server to answer /health.
    #[arg(long, default_value_t = 60)]
    pub server_timeout_sec: u64,
    /// Another run instead of the measurements (none: the bench).
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
}

/// Runs of `locale2b bench` other than the measurements.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchMode {
    /// Mixed load from concurrent clients for a while (create, exec, files,
    /// processes, pause, resume, destroy), then leak checks: server RSS and
    /// open files, VMM processes, disk use. Fails on any failed request or leak.
    Soak(Box<soak::SoakArgs>),
}

/// Counts after applying `--quick` and defaults.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Counts {
    iterations: usize,
    ops: usize,
    pause_cycles: usize,
    /// Samples of each 64 MiB transfer.
    transfers: usize,
    density_budget_mb: u64,
}

impl BenchArgs {
    fn counts(&self) -> Counts {
        let q = self.quick;
        Counts {
            iterations: self.iterations.unwrap_or(if q { 3 } else { 20 }).max(1),
            ops: self.ops.unwrap_or(if q { 10 } else { 50 }).max(1),
            pause_cycles: self.pause_cycles.unwrap_or(if q { 2 } else { 5 }),
            transfers: if q { 1 } else { 3 },
            density_budget_mb: self
                .density_budget_mb
                .unwrap_or(if q { 1024 } else { 3072 }),
        }
    }

    fn base_dir(&self) -> PathBuf {
        self.base_dir.clone().unwrap_or_default()
    }

    fn vmm(&self) -> String {
        self.vmm.clone().unwrap_or_else(|| "qemu".into())
    }

    fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.base_dir().join("images").join("default"))
    }

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
}

/// Runs the benchmark, or the run `args.mode` names (blocking: it builds
/// its own Tokio runtime).
///
/// # Errors
/// When the server cannot be started or reached, or the JSON file cannot be
/// written. Failures of single operations are reported in the table instead
/// (the soak fails on them: see [`soak::run`]).
pub fn run(mut args: BenchArgs, config: &locale2b_config::Config) -> anyhow::Result<()> {
    if let Some(BenchMode::Soak(soak)) = args.mode.take() {
        return soak::run(*soak, config);
    }
    let args = args.resolve(config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

/// Sandboxes and workspaces created and not yet destroyed.
#[derive(Debug, Default)]
struct Tracker {
    sandboxes: Mutex<BTreeSet<String>>,
    workspaces: Mutex<BTreeSet<String>>,
}

impl Tracker {
    fn add(&self, id: &str) {
        if let Ok(mut s) = self.sandboxes.lock() {
            s.insert(id.to_owned());
        }
    }
    fn remove(&self, id: &str) {
        if let Ok(mut s) = self.sandboxes.lock() {
            s.remove(id);
        }
    }
    fn sandboxes(&self) -> Vec<String> {
        self.sandboxes
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
    fn add_workspace(&self, id: &str) {
        if let Ok(mut s) = self.workspaces.lock() {
            s.insert(id.to_owned());
        }
    }
    fn workspaces(&self) -> Vec<String> {
        self.workspaces
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

struct Bench {
    api: Api,
    /// Base directory of the server under test.
    base: PathBuf,
    counts: Counts,
    memory_mb: u32,
    tracker: Arc<Tracker>,
    server_pid: Option<u32>,
    /// Creates that failed (any phase).
    create_failures: std::sync::atomic::AtomicUsize,
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let counts = args.counts();
    let image_dir = args.image_dir();
    // Read now: the image may be replaced while the bench runs.
    let manifest = report::read_manifest(&image_dir);

    let mut own = None;
    let (url, key, base) = match (&args.url, &args.api_key) {
        (Some(url), Some(key)) => (url.clone(), key.clone(), args.base_dir()),
        _ => {
            let budget = counts
                .density_budget_mb
                .max(u64::from(args.memory_mb) * (u64::from(templates::FORK_WIDE) + 2))
                .max(512);
            let per = u64::from(args.density_memory_mb.max(1));
            let max_sandboxes = u32::try_from(budget / per + 2).unwrap_or(u32::MAX).max(4);
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("cannot find this executable")?,
            };
            eprintln!("bench: starting `{} serve` ({})", bin.display(), args.vmm());
            let s = server::OwnServer::start(&server::ServerSpec {
                bin,
                image_dir: image_dir.clone(),
                vmm: args.vmm(),
                max_sandboxes,
                memory_budget_mb: budget,
                start_timeout: Duration::from_secs(args.server_timeout_sec),
            })
            .await?;
            eprintln!("bench: server at {} with base {}", s.url, s.base.display());
            let t = (s.url.clone(), s.key.clone(), s.base.clone());
            own = Some(s);
            t
        }
    };

    let api = Api::new(&url, &key)?;
    let bench = Bench {
        api,
        base,
        counts,
        memory_mb: args.memory_mb,
        tracker: Arc::new(Tracker::default()),
        server_pid: own.as_ref().and_then(server::OwnServer::pid),
        create_failures: std::sync::atomic::AtomicUsize::new(0),
    };

    // The measurements; Ctrl-C skips to the cleanup.
    let outcome = tokio::select! {
        r = bench.measure(&args) => Some(r),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("bench: interrupted; cleaning up");
            None
        }
    };

    bench.cleanup().await;
    let failed = matches!(&outcome, Some(Err(_)))
        || bench
            .create_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
    let leftover_processes = match own.as_mut() {
        Some(s) => {
            if failed {
                // The directory is about to go: show why creates failed.
                eprintln!("bench: server log (last 40 lines):\n{}", s.log_tail(40));
            }
            let l = s.stop().await;
            if !l.is_empty() {
                eprintln!("bench: killed {} leftover process(es):", l.len());
                for p in &l {
                    eprintln!("  {p}");
                }
            }
            l
        }
        None => Vec::new(),
    };

    let Some(outcome) = outcome else {
        anyhow::bail!("interrupted");
    };
    let (metrics, density, health) = outcome?;

    let report = Report {
        schema_version: report::SCHEMA_VERSION,
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        environment: Environment::collect(health.as_ref(), &image_dir, manifest, own.is_some()),
        settings: json!({
            "iterations": counts.iterations,
            "ops": counts.ops,
            "pause_cycles": counts.pause_cycles,
            "density_budget_mb": counts.density_budget_mb,
            "density_memory_mb": args.density_memory_mb,
            "density_batch": args.density_batch,
            "memory_mb": args.memory_mb,
            "quick": args.quick,
        }),
        metrics,
        density,
        leftover_processes,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if report
        .metrics
        .iter()
        .any(|m| m.name == "create.wall" && m.count == 0)
    {
        anyhow::bail!("no sandbox could be created; see the notes in the table");
    }
    Ok(())
}

fn print_report(r: &Report) {
    let e = &r.environment;
    println!(
        "locale2b bench {} | backend {} ({}) | {} x {} | host kernel {} | {} MiB RAM | {:.0} s",
        e.locale2b_version,
        e.backend.as_deref().unwrap_or("?"),
        e.accel.as_deref().unwrap_or("?"),
        e.cpu_count,
        e.cpu_model.as_deref().unwrap_or("?"),
        e.kernel.as_deref().unwrap_or("?"),
        e.host_mem_mb.unwrap_or(0),
        r.duration_s
    );
    println!();
    print!("{}", report::table(&r.metrics));
    if let Some(d) = &r.density {
        println!();
        println!(
            "density: {} of {} sandboxes of {} MiB started (budget {} MiB, {} at a time) in {}; stop: {}",
            d.started,
            d.target,
            d.sandbox_memory_mb,
            d.budget_mb,
            d.batch,
            d.total_start_s
                .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.1} s")),
            d.stop_reason
        );
        if let Some(s) = &d.rss_per_sandbox_mb {
            println!(
                "density: host RSS per sandbox p50 {:.1} MiB, max {:.1} MiB, total {:.0} MiB; server RSS {} -> {} MiB",
                s.p50,
                s.max,
                d.rss_total_mb.unwrap_or(0.0),
                d.server_rss_before_mb
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
                d.server_rss_peak_mb
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
            );
        }
    }
    if !r.leftover_processes.is_empty() {
        println!();
        println!("leftover processes killed: {}", r.leftover_processes.len());
    }
}

/// What `state.json` tells the bench about a sandbox's VM.
#[derive(Debug, Default)]
struct VmFiles {
    pid: Option<u32>,
    vsock: Option<PathBuf>,
    console: Option<PathBuf>,
}

fn err_note(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.replace('\n', " ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

fn join_notes(notes: &[String]) -> Option<String> {
    if notes.is_empty() {
        None
    } else {
        Some(notes.join("; "))
    }
}

impl Bench {
    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.base.join("sandboxes").join(id)
    }

    fn vm_files(&self, id: &str) -> VmFiles {
        let dir = self.sandbox_dir(id);
        let process = id
            .parse()
            .ok()
            .and_then(|id| Store::new(&self.base).read_sandbox(&id).ok())
            .and_then(|r| r.process);
        let or_default = |p: Option<PathBuf>, default: &str| {
            p.or_else(|| Some(dir.join(default)).filter(|p| p.exists()))
        };
        VmFiles {
            pid: process.as_ref().map(|p| p.pid),
            vsock: or_default(process.as_ref().map(|p| p.vsock_path.clone()), "vsock.sock"),
            console: or_default(process.map(|p| p.console_log), "console.log"),
        }
    }

    async fn create(&self, body: Value) -> Result<(String, api::Timed), anyhow::Error> {
        let r = self
            .api
            .post("/sandboxes", &body, CREATE_TIMEOUT)
            .await
            .inspect_err(|_| {
                self.create_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })?;
        let id = str_field(&r.body, "sandbox_id")?.to_owned();
        self.tracker.add(&id);
        Ok((id, r))
    }

    async fn destroy(&self, id: &str) -> Result<f64, ApiError> {
        let r = self
            .api
            .delete(&format!("/sandboxes/{id}"), LIFECYCLE_TIMEOUT)
            .await;
        match r {
            Ok(t) => {
                self.tracker.remove(id);
                Ok(t.ms)
            }
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                self.tracker.remove(id);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn measure(
        &self,
        args: &BenchArgs,
    ) -> anyhow::Result<(Vec<Metric>, Option<Density>, Option<Value>)> {
        let health = self
            .api
            .get("/health")
            .await
            .context("GET /health failed")?
            .body;
        eprintln!(
            "bench: backend {} ({}); {} cold boots, {} ops, {} pause cycles",
            health.get("backend").and_then(Value::as_str).unwrap_or("?"),
            health.get("accel").and_then(Value::as_str).unwrap_or("?"),
            self.counts.iterations,
            self.counts.ops,
            self.counts.pause_cycles
        );
        let mut metrics = self.cold_boots().await;
        if let Some(mb) = args.pause_memory_mb.filter(|mb| *mb != self.memory_mb) {
            metrics.extend(self.pause_resume_of_size(mb).await);
        }
        metrics.extend(self.template_creates().await);
        metrics.extend(self.forks().await);
        let accel = health.get("accel").and_then(Value::as_str).unwrap_or("tcg");
        if health.get("backend").and_then(Value::as_str) == Some("qemu") {
            eprintln!("bench: baselines through the qemu driver alone");
            let n = self.counts.iterations.clamp(3, 10);
            metrics.extend(baseline::run(&args.image_dir(), self.memory_mb, accel, n).await);
            metrics.extend(baseline::ratios(&metrics));
        }
        metrics.extend(self.working_sandbox().await);
        let density = if self.counts.density_budget_mb > 0 {
            let (m, d) = self.density(args).await;
            metrics.extend(m);
            Some(d)
        } else {
            None
        };
        Ok((metrics, density, Some(health)))
    }

    /// Waits up to 3 s for the ready line in a console log and parses it.
    async fn guest_boot(&self, files: &VmFiles) -> Result<console::GuestBoot, String> {
        let Some(path) = &files.console else {
            return Err("no console log".into());
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if let Some(b) = console::guest_boot_time(&text) {
                return Ok(b);
            }
            if Instant::now() >= deadline {
                return Err(if text.contains(console::READY_MARKER) {
                    "no printk timestamp before the ready line".into()
                } else {
                    "no ready line in the console log".into()
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cold_boots(&self) -> Vec<Metric> {
        let (mut create, mut server_boot, mut guest, mut destroy) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut create_err, mut guest_err, mut destroy_err) = (Vec::new(), Vec::new(), Vec::new());
        let (mut uptime, mut uptime_err) = (Vec::new(), Vec::new());
        let mut sources = BTreeSet::new();
        for i in 0..self.counts.iterations {
            let body = json!({ "memory_mb": self.memory_mb, "boot": "cold" });
            match self.create(body).await {
                Ok((id, r)) => {
                    create.push(r.ms);
                    if let Some(b) = r.body.get("boot_ms").and_then(Value::as_f64) {
                        server_boot.push(b);
                    }
                    match self.guest_uptime_ms(&id).await {
                        Ok(ms) => uptime.push(ms),
                        Err(e) => uptime_err.push(err_note(&e)),
                    }
                    match self.guest_boot(&self.vm_files(&id)).await {
                        Ok(b) => {
                            guest.push(b.ms);
                            sources.insert(match b.source {
                                console::BootTimeSource::ReadyLine => "ready line's printk stamp",
                                console::BootTimeSource::LastKernelLine => {
                                    "last printk stamp before the ready line (lower bound)"
                                }
                            });
                        }
                        Err(e) => guest_err.push(e),
                    }
                    match self.destroy(&id).await {
                        Ok(ms) => destroy.push(ms),
                        Err(e) => destroy_err.push(err_note(&e)),
                    }
                    eprintln!(
                        "bench: cold boot {}/{}: create {:.0} ms",
                        i + 1,
                        self.counts.iterations,
                        r.ms
                    );
                }
                Err(e) => {
                    eprintln!("bench: cold boot {} failed: {e:#}", i + 1);
                    create_err.push(err_note(&e));
                }
            }
        }
        create_err.dedup();
        guest_err.dedup();
        destroy_err.dedup();
        let mut guest_note: Vec<String> = sources.into_iter().map(str::to_owned).collect();
        if !guest_err.is_empty() {
            guest_note.push(format!("{} n/a: {}", guest_err.len(), guest_err.join(", ")));
        }
        let mut create_note =
            vec!["POST /sandboxes until 200 (agent answered), sequential".to_owned()];
        if !create_err.is_empty() {
            create_note.push(format!(
                "{} failed: {}",
                create_err.len(),
                create_err.join(" | ")
            ));
        }
        vec![
            Metric::new("create.wall", "ms", &create, join_notes(&create_note)),
            Metric::new(
                "create.boot_ms_server",
                "ms",
                &server_boot,
                Some("server-reported boot_ms".into()),
            ),
            Metric::new(
                "boot.guest_agent_ready",
                "ms",
                &guest,
                join_notes(&guest_note),
            ),
            Metric::new(
                "boot.guest_uptime_at_first_exec",
                "ms",
                &uptime,
                join_notes(&uptime_err).or(Some(
                    "/proc/uptime read by the first exec after create (upper bound)".into(),
                )),
            ),
            Metric::new(
                "destroy.wall",
                "ms",
                &destroy,
                join_notes(&destroy_err).or(Some("DELETE /sandboxes/{id}".into())),
            ),
        ]
    }

    async fn working_sandbox(&self) -> Vec<Metric> {
        let ws = format!("bench-{:08x}", rand::thread_rng().next_u32());
        let body = json!({ "memory_mb": self.memory_mb, "workspace_id": ws, "boot": "cold" });
        let id = match self.create(body).await {
            Ok((id, _)) => id,
            Err(e) => {
                eprintln!("bench: cannot create the working sandbox: {e:#}");
                let note = Some(format!("no working sandbox: {}", err_note(&e)));
                return [
                    "exec.true.api_round_trip",
                    "exec.true.overhead",
                    "agent.ping.warm",
                ]
                .iter()
                .map(|n| Metric::new(n, "ms", &[], note.clone()))
                .collect();
            }
        };
        self.tracker.add_workspace(&ws);
        eprintln!("bench: working sandbox {id} (workspace {ws})");
        let mut m = Vec::new();
        m.extend(self.exec_overhead(&id).await);
        m.extend(streams::metrics(&self.api, &id, self.counts.ops).await);
        m.extend(ports::metrics(&self.api, &id, self.counts.ops).await);
        m.extend(self.agent_ping(&id).await);
        m.extend(self.files(&id).await);
        m.extend(transfer::metrics(&self.api, &id, self.counts.transfers).await);
        m.extend(self.management().await);
        let (pm, current) = self.pause_resume(&id, &ws, "").await;
        m.extend(pm);
        if let Err(e) = self.destroy(&current).await {
            eprintln!("bench: cannot destroy {current}: {e}");
        }
        m
    }

    /// Pause/resume cycles of a cold-booted sandbox of `memory_mb` (rows
    /// labelled `.<n>mb`).
    async fn pause_resume_of_size(&self, memory_mb: u32) -> Vec<Metric> {
        let ws = format!("bench-{:08x}", rand::thread_rng().next_u32());
        let body = json!({ "memory_mb": memory_mb, "workspace_id": ws, "boot": "cold" });
        let label = format!(".{memory_mb}mb");
        match self.create(body).await {
            Ok((id, _)) => {
                self.tracker.add_workspace(&ws);
                let (m, current) = self.pause_resume(&id, &ws, &label).await;
                if let Err(e) = self.destroy(&current).await {
                    eprintln!("bench: cannot destroy {current}: {e}");
                }
                m
            }
            Err(e) => vec![Metric::new(
                &format!("pause{label}.wall"),
                "ms",
                &[],
                Some(format!("no {memory_mb} MiB sandbox: {}", err_note(&e))),
            )],
        }
    }

    /// Guest uptime (`/proc/uptime`, 10 ms resolution) read by an exec.
    async fn guest_uptime_ms(&self, id: &str) -> anyhow::Result<f64> {
        let r = self
            .api
            .post(
                &format!("/sandboxes/{id}/exec"),
                &json!({ "command": "cat /proc/uptime" }),
                OP_TIMEOUT,
            )
            .await?;
        let out = r.body.get("stdout").and_then(Value::as_str).unwrap_or("");
        parse_uptime_ms(out).ok_or_else(|| anyhow::anyhow!("unexpected /proc/uptime: {out:?}"))
    }

    async fn exec_true(&self, id: &str) -> Result<(f64, f64), anyhow::Error> {
        let r = self
            .api
            .post(
                &format!("/sandboxes/{id}/exec"),
                &json!({ "command": "true" }),
                OP_TIMEOUT,
            )
            .await?;
        let guest = r
            .body
            .get("duration_ms")
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow::anyhow!("exec answer has no duration_ms: {}", r.body))?;
        if r.body.get("exit_code").and_then(Value::as_i64) != Some(0) {
            anyhow::bail!("`true` did not exit 0: {}", r.body);
        }
        Ok((r.ms, guest))
    }

    async fn exec_overhead(&self, id: &str) -> Vec<Metric> {
        eprintln!("bench: exec x{}", self.counts.ops);
        let _ = self.exec_true(id).await; // warm-up (first fork in the guest)
        let (mut rtt, mut over, mut errs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.counts.ops {
            match self.exec_true(id).await {
                Ok((ms, guest)) => {
                    rtt.push(ms);
                    over.push(ms - guest);
                }
                Err(e) => errs.push(err_note(&e)),
            }
        }
        errs.dedup();
        vec![
            Metric::new(
                "exec.true.api_round_trip",
                "ms",
                &rtt,
                join_notes(&errs).or(Some("POST /exec `true`".into())),
            ),
            Metric::new(
                "exec.true.overhead",
                "ms",
                &over,
                Some("round trip minus the agent's duration_ms (1 ms resolution)".into()),
            ),
        ]
    }

    async fn agent_ping(&self, id: &str) -> Vec<Metric> {
        let Some(sock) = self.vm_files(id).vsock.filter(|p| p.exists()) else {
            let note = Some(format!(
                "no vsock socket readable under {}",
                self.base.display()
            ));
            return vec![
                Metric::new("agent.ping.warm", "ms", &[], note.clone()),
                Metric::new("agent.ping.new_connection", "ms", &[], note),
            ];
        };
        eprintln!(
            "bench: agent ping x{} via {}",
            self.counts.ops,
            sock.display()
        );
        let client = AgentClient::new(&sock, ClientConfig::default());
        let (mut warm, mut fresh, mut errs) = (Vec::new(), Vec::new(), Vec::new());
        if let Err(e) = client.ping().await {
            errs.push(err_note(&e));
        }
        for _ in 0..self.counts.ops {
            let t = Instant::now();
            match client.ping().await {
                Ok(_) => warm.push(ms_since(t)),
                Err(e) => errs.push(err_note(&e)),
            }
        }
        for _ in 0..self.counts.ops {
            let c = AgentClient::new(&sock, ClientConfig::default());
            let t = Instant::now();
            match c.ping().await {
                Ok(_) => fresh.push(ms_since(t)),
                Err(e) => errs.push(err_note(&e)),
            }
        }
        errs.dedup();
        vec![
            Metric::new(
                "agent.ping.warm",
                "ms",
                &warm,
                join_notes(&errs).or(Some("ping on a pooled hybrid-vsock connection".into())),
            ),
            Metric::new(
                "agent.ping.new_connection",
                "ms",
                &fresh,
                Some("connect + CONNECT 5000 + hello + ping".into()),
            ),
        ]
    }

    async fn files(&self, id: &str) -> Vec<Metric> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut m = Vec::new();
        for (label, size) in [
            ("1KiB", 1024usize),
            ("64KiB", 64 * 1024),
            ("1MiB", 1024 * 1024),
        ] {
            let n = if size >= 1024 * 1024 {
                (self.counts.ops / 2).max(1)
            } else {
                self.counts.ops
            };
            eprintln!("bench: files {label} x{n}");
            let mut content = vec![0u8; size];
            rand::thread_rng().fill_bytes(&mut content);
            let encoded = b64.encode(&content);
            let path = format!("/workspace/bench-{label}.bin");
            let (mut w, mut r, mut errs) = (Vec::new(), Vec::new(), Vec::new());
            let body = json!({ "path": path, "content": encoded });
            let read_path = format!("/sandboxes/{id}/files/read?path={path}");
            for _ in 0..n {
                match self
                    .api
                    .post(&format!("/sandboxes/{id}/files/write"), &body, OP_TIMEOUT)
                    .await
                {
                    Ok(t) => w.push(t.ms),
                    Err(e) => {
                        errs.push(err_note(&e));
                        continue;
                    }
                }
                match self.api.get(&read_path).await {
                    Ok(t) => {
                        let got = t
                            .body
                            .get("content")
                            .and_then(Value::as_str)
                            .and_then(|c| b64.decode(c).ok());
                        if got.as_deref() == Some(content.as_slice()) {
                            r.push(t.ms);
                        } else {
                            errs.push("read returned different bytes".into());
                        }
                    }
                    Err(e) => errs.push(err_note(&e)),
                }
            }
            errs.dedup();
            m.push(Metric::new(
                &format!("files.write.{label}"),
                "ms",
                &w,
                join_notes(&errs).or(Some("POST files/write, base64 JSON".into())),
            ));
            m.push(Metric::new(
                &format!("files.read.{label}"),
                "ms",
                &r,
                Some("GET files/read, content verified".into()),
            ));
        }
        m
    }

    /// `GET /health` and `GET /sandboxes` latency; the list's metric name
    /// carries how many sandboxes were running.
    async fn management(&self) -> Vec<Metric> {
        let (mut health, mut list, mut errs) = (Vec::new(), Vec::new(), Vec::new());
        let mut running = None;
        for _ in 0..self.counts.ops {
            match self.api.get("/health").await {
                Ok(t) => health.push(t.ms),
                Err(e) => errs.push(err_note(&e)),
            }
        }
        for _ in 0..self.counts.ops {
            match self.api.get("/sandboxes").await {
                Ok(t) => {
                    list.push(t.ms);
                    running = Some(count_running(&t.body));
                }
                Err(e) => errs.push(err_note(&e)),
            }
        }
        errs.dedup();
        let n = running.map_or_else(|| "?".to_owned(), |n| n.to_string());
        vec![
            Metric::new("api.health", "ms", &health, join_notes(&errs)),
            Metric::new(
                &format!("api.list_sandboxes[N={n}]"),
                "ms",
                &list,
                Some(format!("GET /sandboxes with {n} running")),
            ),
        ]
    }

    /// Pause/resume cycles. Returns the metrics and the sandbox id to destroy
    /// afterwards (a resume may name a new sandbox).
    async fn pause_resume(&self, id: &str, ws: &str, label: &str) -> (Vec<Metric>, String) {
        let mut current = id.to_owned();
        let (mut pause, mut resume, mut first_exec, mut size) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut pause_err, mut resume_err) = (None, None);
        let snaps = self.base.join("workspaces").join(ws).join("snapshots");
        for c in 0..self.counts.pause_cycles {
            match self
                .api
                .post(
                    &format!("/sandboxes/{current}/pause"),
                    &json!({}),
                    LIFECYCLE_TIMEOUT,
                )
                .await
            {
                Ok(t) => pause.push(t.ms),
                Err(e) => {
                    eprintln!("bench: pause failed: {e}");
                    pause_err = Some(err_note(&e));
                    break;
                }
            }
            if let Some(bytes) = allocated_bytes(&snaps) {
                size.push(bytes as f64 / (1024.0 * 1024.0));
            }
            match self
                .api
                .post(
                    &format!("/sandboxes/{current}/resume"),
                    &json!({}),
                    CREATE_TIMEOUT,
                )
                .await
            {
                Ok(t) => {
                    resume.push(t.ms);
                    if let Some(new) = t.body.get("sandbox_id").and_then(Value::as_str) {
                        if new != current {
                            self.tracker.remove(&current);
                            self.tracker.add(new);
                            current = new.to_owned();
                        }
                    }
                }
                Err(e) => {
                    eprintln!("bench: resume failed: {e}");
                    resume_err = Some(err_note(&e));
                    break;
                }
            }
            match self.exec_true(&current).await {
                Ok((ms, _)) => first_exec.push(ms),
                Err(e) => {
                    resume_err = Some(format!("exec after resume: {}", err_note(&e)));
                    break;
                }
            }
            eprintln!("bench: pause/resume {}/{}", c + 1, self.counts.pause_cycles);
        }
        let skipped = (self.counts.pause_cycles == 0).then(|| "--pause-cycles 0".to_owned());
        let metrics = vec![
            Metric::new(
                &format!("pause{label}.wall"),
                "ms",
                &pause,
                pause_err.clone().or(skipped.clone()),
            ),
            Metric::new(
                &format!("resume{label}.wall"),
                "ms",
                &resume,
                resume_err
                    .clone()
                    .or(pause_err
                        .as_ref()
                        .map(|_| "not reached: pause failed".into()))
                    .or(skipped.clone()),
            ),
            Metric::new(
                &format!("resume{label}.first_exec"),
                "ms",
                &first_exec,
                Some("first exec `true` round trip after resume".into()),
            ),
            Metric::new(
                &format!("snapshot{label}.size_on_disk"),
                "MiB",
                &size,
                Some(if size.is_empty() {
                    format!("nothing readable under {}", snaps.display())
                } else {
                    "allocated bytes of workspaces/<ws>/snapshots after pause".into()
                }),
            ),
        ];
        (metrics, current)
    }

    async fn density(&self, args: &BenchArgs) -> (Vec<Metric>, Density) {
        let per = args.density_memory_mb.max(1);
        let batch = args.density_batch.max(1);
        let target = usize::try_from(self.counts.density_budget_mb / u64::from(per)).unwrap_or(0);
        let mut d = Density {
            budget_mb: self.counts.density_budget_mb,
            sandbox_memory_mb: per,
            batch,
            target,
            server_rss_before_mb: self.server_pid.and_then(server::rss_kib).map(kib_to_mib),
            ..Density::default()
        };
        eprintln!("bench: density: up to {target} sandboxes of {per} MiB, {batch} at a time");
        let mut ids: Vec<String> = Vec::new();
        let mut create_ms = Vec::new();
        let t0 = Instant::now();
        let mut stop = None;
        while ids.len() < target && stop.is_none() {
            let n = batch.min(target - ids.len());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let api = self.api.clone();
                set.spawn(async move {
                    api.post("/sandboxes", &json!({ "memory_mb": per }), CREATE_TIMEOUT)
                        .await
                });
            }
            while let Some(res) = set.join_next().await {
                match res {
                    Ok(Ok(t)) => match str_field(&t.body, "sandbox_id") {
                        Ok(id) => {
                            self.tracker.add(id);
                            ids.push(id.to_owned());
                            create_ms.push(t.ms);
                            d.total_start_s = Some(t0.elapsed().as_secs_f64());
                        }
                        Err(e) => stop = Some(err_note(&e)),
                    },
                    Ok(Err(e)) if e.status() == Some(StatusCode::SERVICE_UNAVAILABLE) => {
                        stop = Some(format!("server at capacity: {}", err_note(&e)));
                    }
                    Ok(Err(e)) => {
                        self.create_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        stop = Some(err_note(&e));
                    }
                    Err(e) => stop = Some(format!("task failed: {e}")),
                }
            }
            eprintln!("bench: density: {} running", ids.len());
        }
        d.started = ids.len();
        d.stop_reason = stop.unwrap_or_else(|| "target reached".into());

        // Host memory per sandbox: every process mentioning its directory,
        // plus the VMM pid from state.json.
        let mut rss = Vec::new();
        for id in &ids {
            let mut pids: BTreeSet<u32> = server::processes_mentioning(&self.sandbox_dir(id))
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            if let Some(p) = self.vm_files(id).pid {
                pids.insert(p);
            }
            let kib: Vec<u64> = pids.iter().filter_map(|p| server::rss_kib(*p)).collect();
            if kib.is_empty() {
                d.rss_unreadable += 1;
            } else {
                rss.push(kib_to_mib(kib.iter().sum()));
            }
        }
        d.rss_per_sandbox_mb = stats::Summary::of(&rss);
        d.rss_total_mb = (!rss.is_empty()).then(|| rss.iter().sum());
        d.server_rss_peak_mb = self.server_pid.and_then(server::rss_kib).map(kib_to_mib);

        let mut m = vec![Metric::new(
            "density.create.wall",
            "ms",
            &create_ms,
            Some(format!(
                "{batch} concurrent creates while earlier sandboxes run"
            )),
        )];
        m.extend(self.management_at_peak().await);

        // Tear down, `batch` at a time.
        let mut destroy_ms = Vec::new();
        let mut errs = Vec::new();
        for chunk in ids.chunks(batch) {
            let results = futures::future::join_all(chunk.iter().map(|id| self.destroy(id))).await;
            for r in results {
                match r {
                    Ok(ms) => destroy_ms.push(ms),
                    Err(e) => errs.push(err_note(&e)),
                }
            }
        }
        errs.dedup();
        m.push(Metric::new(
            "density.destroy.wall",
            "ms",
            &destroy_ms,
            join_notes(&errs).or(Some(format!("{batch} concurrent deletes"))),
        ));
        (m, d)
    }

    async fn management_at_peak(&self) -> Vec<Metric> {
        let (mut list, mut errs) = (Vec::new(), Vec::new());
        let mut running = None;
        for _ in 0..self.counts.ops {
            match self.api.get("/sandboxes").await {
                Ok(t) => {
                    list.push(t.ms);
                    running = Some(count_running(&t.body));
                }
                Err(e) => errs.push(err_note(&e)),
            }
        }
        errs.dedup();
        let n = running.map_or_else(|| "?".to_owned(), |n| n.to_string());
        vec![Metric::new(
            &format!("api.list_sandboxes[N={n}]"),
            "ms",
            &list,
            join_notes(&errs).or(Some(format!(
                "GET /sandboxes with {n} running (density peak)"
            ))),
        )]
    }

    /// Destroys everything still tracked and deletes the bench's workspaces.
    async fn cleanup(&self) {
        for id in self.tracker.sandboxes() {
            match self.destroy(&id).await {
                Ok(_) => {}
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
                Err(e) => eprintln!("bench: cleanup: cannot destroy {id}: {e}"),
            }
        }
        for ws in self.tracker.workspaces() {
            match self
                .api
                .delete(&format!("/workspaces/{ws}"), LIFECYCLE_TIMEOUT)
                .await
            {
                Ok(_) => {}
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
                Err(e) => eprintln!("bench: cleanup: cannot delete workspace {ws}: {e}"),
            }
        }
    }
}

/// Milliseconds from the first field of `/proc/uptime` ("12.34 5.67").
fn parse_uptime_ms(s: &str) -> Option<f64> {
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(secs * 1000.0)
}

fn count_running(list: &Value) -> usize {
    list.get("sandboxes")
        .and_then(Value::as_array)
        .map_or(0, |a| {
            a.iter()
                .filter(|s| s.get("status").and_then(Value::as_str) == Some("running"))
                .count()
        })
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Allocated bytes (st_blocks * 512) of every file under `dir`; `None` when
/// `dir` cannot be read.
fn allocated_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    let mut read_any = false;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        read_any = true;
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    read_any.then_some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn allocated_bytes_counts_real_blocks() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(allocated_bytes(dir.path()), Some(0));
        std::fs::create_dir(dir.path().join("s1")).unwrap();
        std::fs::write(dir.path().join("s1/mem"), vec![1u8; 64 * 1024]).unwrap();
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(100 * 1024 * 1024).unwrap();
        let n = allocated_bytes(dir.path()).unwrap();
        assert!((64 * 1024..1024 * 1024).contains(&n), "{n}");
        assert_eq!(allocated_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn parses_proc_uptime() {
        assert_eq!(parse_uptime_ms("3.25 1.50\n"), Some(3250.0));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("x y"), None);
    }

    #[test]
    fn counts_running_sandboxes() {
        let v = json!({"sandboxes": [
            {"status": "running"}, {"status": "paused"}, {"status": "running"}
        ]});
        assert_eq!(count_running(&v), 2);
        assert_eq!(count_running(&json!({})), 0);
    }

    #[test]
    fn quick_lowers_the_defaults() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let full = T::try_parse_from(["t"]).unwrap().b.counts();
        let quick = T::try_parse_from(["t", "--quick"]).unwrap().b.counts();
        assert_eq!(full.iterations, 20);
        assert!(quick.iterations < full.iterations && quick.ops < full.ops);
        let explicit = T::try_parse_from(["t", "--quick", "--iterations", "7"])
            .unwrap()
            .b
            .counts();
        assert_eq!(explicit.iterations, 7);
        assert!(T::try_parse_from(["t", "--url", "http://x"]).is_err());
    }

    #[test]
    fn soak_is_an_optional_subcommand() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let plain = T::try_parse_from(["t", "--quick", "--json", "x.json"])
            .unwrap()
            .b;
        assert!(plain.mode.is_none() && plain.quick);
        let Some(BenchMode::Soak(s)) = T::try_parse_from([
            "t",
            "soak",
            "--minutes",
            "0.5",
            "--clients",
            "2",
            "--json",
            "s.json",
        ])
        .unwrap()
        .b
        .mode
        else {
            panic!("no soak");
        };
        assert_eq!((s.minutes, s.clients), (0.5, 2));
        assert_eq!(s.json.as_deref(), Some(Path::new("s.json")));
        let Some(BenchMode::Soak(d)) = T::try_parse_from(["t", "soak"]).unwrap().b.mode else {
            panic!("no soak");
        };
        assert_eq!((d.minutes, d.clients, d.fd_tolerance), (10.0, 3, 8));
        // Bench flags do not mix with the soak, and --server-pid needs --url.
        assert!(T::try_parse_from(["t", "--quick", "soak"]).is_err());
        assert!(T::try_parse_from(["t", "soak", "--server-pid", "1"]).is_err());
    }
}
