//! What a benchmark run produces: metrics, environment, density figures; the
//! table printed on stdout and the JSON document written with `--json`.

use super::stats::Summary;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The image's manifest.json, parsed; `None` when unreadable.
pub fn read_manifest(image_dir: &Path) -> Option<Value> {
    std::fs::read(image_dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Version of the JSON document's layout (docs/performance.md).
pub const SCHEMA_VERSION: u32 = 1;

/// One measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// Stable name, e.g. `create.wall`.
    pub name: String,
    /// `ms`, `MiB`, ...
    pub unit: String,
    /// Number of samples (0 when none could be taken).
    pub count: usize,
    /// Median; null without samples.
    pub p50: Option<f64>,
    /// 95th percentile; null without samples.
    pub p95: Option<f64>,
    /// 99th percentile; null without samples.
    pub p99: Option<f64>,
    /// Maximum; null without samples.
    pub max: Option<f64>,
    /// How it was measured, or why it is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Metric {
    /// A metric from samples; `note` explains it (or its absence).
    pub fn new(name: &str, unit: &str, samples: &[f64], note: Option<String>) -> Self {
        let s = Summary::of(samples);
        Self {
            name: name.to_owned(),
            unit: unit.to_owned(),
            count: s.map_or(0, |s| s.count),
            p50: s.map(|s| s.p50),
            p95: s.map(|s| s.p95),
            p99: s.map(|s| s.p99),
            max: s.map(|s| s.max),
            note,
        }
    }
}

/// Where the numbers were measured. TCG and KVM figures are not comparable.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// VMM backend reported by `/health`.
    pub backend: Option<String>,
    /// `kvm` or `tcg`, from `/health`.
    pub accel: Option<String>,
    /// Server version from `/health`.
    pub server_version: Option<String>,
    /// Version of this `locale2b` binary.
    pub locale2b_version: String,
    /// Logical CPUs of the host.
    pub cpu_count: usize,
    /// CPU model name (`/proc/cpuinfo`).
    pub cpu_model: Option<String>,
    /// Host kernel release (`uname -r`).
    pub kernel: Option<String>,
    /// Host RAM, MiB.
    pub host_mem_mb: Option<u64>,
    /// Guest image directory used.
    pub image_dir: String,
    /// The image's manifest.json, as it is.
    pub image_manifest: Option<Value>,
    /// Whether the bench started its own server (`false` with `--url`).
    pub own_server: bool,
}

impl Environment {
    /// Collects host facts; server facts come from the `/health` body, the
    /// manifest was read when the run started.
    pub fn collect(
        health: Option<&Value>,
        image_dir: &Path,
        image_manifest: Option<Value>,
        own_server: bool,
    ) -> Self {
        let h = |k: &str| {
            health
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let host_mem_mb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .map(|kib| kib / 1024);
        Self {
            backend: h("backend"),
            accel: h("accel"),
            server_version: h("version"),
            locale2b_version: env!("CARGO_PKG_VERSION").to_owned(),
            cpu_count: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_owned()),
            host_mem_mb,
            image_dir: image_dir.display().to_string(),
            image_manifest,
            own_server,
        }
    }
}

/// The density test's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Density {
    /// Guest RAM budget the test fills, MiB.
    pub budget_mb: u64,
    /// Guest RAM of each sandbox, MiB.
    pub sandbox_memory_mb: u32,
    /// Sandboxes created concurrently.
    pub batch: usize,
    /// Sandboxes the budget allows (`budget_mb / sandbox_memory_mb`).
    pub target: usize,
    /// Sandboxes that reached `running`.
    pub started: usize,
    /// Why creation stopped (target reached, 503, error text).
    pub stop_reason: String,
    /// Seconds from the first create request until the last sandbox ran.
    pub total_start_s: Option<f64>,
    /// Sum of VmRSS of each sandbox's processes (VMM and helpers), MiB, one
    /// sample per sandbox.
    pub rss_per_sandbox_mb: Option<Summary>,
    /// Sum over all sandboxes, MiB.
    pub rss_total_mb: Option<f64>,
    /// Server process VmRSS before the test (own server only), MiB.
    pub server_rss_before_mb: Option<f64>,
    /// Server process VmRSS with all density sandboxes running, MiB.
    pub server_rss_peak_mb: Option<f64>,
    /// Sandboxes whose VMM pid could not be read (not counted in RSS).
    pub rss_unreadable: usize,
}

/// Everything one run produces.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Start time, RFC 3339 (UTC).
    pub started_at: String,
    /// Whole run, seconds.
    pub duration_s: f64,
    /// Host, server and image.
    pub environment: Environment,
    /// Flags the run used.
    pub settings: Value,
    /// All metrics, in the order measured.
    pub metrics: Vec<Metric>,
    /// Density test (null when skipped).
    pub density: Option<Density>,
    /// Processes that had to be killed at the end (should be empty).
    pub leftover_processes: Vec<String>,
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// `s` cut to `max` characters (with an ellipsis); the JSON keeps it whole.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Renders the metrics as a Markdown table (readable on a terminal too).
pub fn table(metrics: &[Metric]) -> String {
    let rows: Vec<[String; 8]> = metrics
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.unit.clone(),
                m.count.to_string(),
                cell(m.p50),
                cell(m.p95),
                cell(m.p99),
                cell(m.max),
                short(m.note.as_deref().unwrap_or_default(), 90),
            ]
        })
        .collect();
    let header = [
        "metric", "unit", "count", "p50", "p95", "p99", "max", "note",
    ];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()).take(7) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let w = if i < 7 { width[i] } else { 0 };
            if (2..7).contains(&i) {
                let _ = write!(s, " {c:>w$} |");
            } else {
                let _ = write!(s, " {c:<w$} |");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    let dashes: Vec<String> = (0..8)
        .map(|i| {
            let w = if i < 7 { width[i] } else { 4 };
            if (2..7).contains(&i) {
                format!("{}:", "-".repeat(w.max(1) - 1))
            } else {
                "-".repeat(w.max(3))
            }
        })
        .collect();
    out.push_str(&line(std::array::from_fn(|i| dashes[i].as_str())));
    for r in &rows {
        out.push_str(&line(std::array::from_fn(|i| r[i].as_str())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_without_samples_is_na() {
        let m = Metric::new("pause.wall", "ms", &[], Some("HTTP 501".into()));
        assert_eq!(m.count, 0);
        assert_eq!(m.p50, None);
        let t = table(&[m]);
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("HTTP 501"), "{t}");
        let long = Metric::new("x", "ms", &[], Some("e".repeat(500)));
        assert!(table(&[long]).lines().all(|l| l.chars().count() < 200));
    }

    #[test]
    fn table_has_one_row_per_metric() {
        let ms = [
            Metric::new("a", "ms", &[1.0, 2.0, 3.0], None),
            Metric::new("b", "MiB", &[1234.5], None),
        ];
        let t = table(&ms);
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t
            .lines()
            .nth(2)
            .is_some_and(|l| l.contains("| a ") && l.contains("2.00")));
        assert!(t.lines().nth(3).is_some_and(|l| l.contains("1234")));
    }
}
