//! Counters and latency histograms of one manager, and their rendering in
//! the Prometheus text exposition format (version 0.0.4). Everything is a
//! plain atomic, so recording never blocks a request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram with the fixed [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.counts) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Why a sandbox was paused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// `POST /sandboxes/{id}/pause`.
    Api,
    /// The end of its lifetime with `on_timeout: pause`.
    Timeout,
    /// The idle timeout.
    Idle,
    /// Made room for a create or resume.
    Eviction,
}

impl PauseReason {
    /// The label value (also kept as the record's `paused_by`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Timeout => "timeout",
            Self::Idle => "idle",
            Self::Eviction => "eviction",
        }
    }

    const ALL: [Self; 4] = [Self::Api, Self::Timeout, Self::Idle, Self::Eviction];
}

/// Every counter and histogram of a manager.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Creates that booted a sandbox.
    pub creates: AtomicU64,
    /// Creates that failed (refusals for bad input not counted).
    pub create_failures: AtomicU64,
    /// Sandboxes destroyed (by the API, a lifetime, the reaper).
    pub destroys: AtomicU64,
    /// Pauses by reason, in [`PauseReason::ALL`] order.
    pauses: [AtomicU64; 4],
    /// Resumes (API, create of a paused workspace, auto-resume).
    pub resumes: AtomicU64,
    /// Resumes that failed.
    pub resume_failures: AtomicU64,
    /// Lifetimes that ended (destroyed or paused).
    pub timeouts: AtomicU64,
    /// Creates and resumes refused for capacity.
    pub capacity_refusals: AtomicU64,
    /// Orphans removed by the reaper (processes, directories, cgroups).
    pub reaped: AtomicU64,
    /// Paused sandboxes destroyed at the end of their retention.
    pub retention_destroys: AtomicU64,
    /// Create latency (successful creates).
    pub create_seconds: Histogram,
    /// Exec latency (every exec answered by the guest).
    pub exec_seconds: Histogram,
    /// Pause latency.
    pub pause_seconds: Histogram,
    /// Resume latency.
    pub resume_seconds: Histogram,
}

/// Gauges read when the metrics are rendered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Sandboxes by status name.
    pub by_status: Vec<(&'static str, u64)>,
    /// Configured maximum of sandboxes holding a VM.
    pub max_sandboxes: u64,
    /// Guest RAM of active sandboxes (nominal), MiB.
    pub memory_nominal_mb: u64,
    /// Guest RAM budget, MiB.
    pub memory_budget_mb: u64,
    /// Resident memory of every VMM process (measured), MiB.
    pub vmm_rss_mb: u64,
    /// PSS of all VMM processes, MiB.
    pub vmm_pss_mb: u64,
    /// Per sandbox: id, VMM RSS MiB, CPU percent of one core.
    pub per_sandbox: Vec<(String, u64, f64)>,
}

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts a pause.
    pub fn paused(&self, reason: PauseReason, took: Duration) {
        if let Some(i) = PauseReason::ALL.iter().position(|r| *r == reason) {
            inc(&self.pauses[i]);
        }
        self.pause_seconds.observe(took);
    }

    /// Pauses so far for `reason`.
    pub fn pauses(&self, reason: PauseReason) -> u64 {
        PauseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.pauses[i].load(Ordering::Relaxed))
    }

    /// The text exposition of every metric and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "locale2b_creates_total",
            "Sandboxes created (booted).",
            &self.creates,
        );
        counter(
            &mut out,
            "locale2b_create_failures_total",
            "Creates that failed after admission.",
            &self.create_failures,
        );
        counter(
            &mut out,
            "locale2b_destroys_total",
            "Sandboxes destroyed.",
            &self.destroys,
        );
        let _ = writeln!(
            out,
            "# HELP locale2b_pauses_total Sandboxes paused, by reason."
        );
        let _ = writeln!(out, "# TYPE locale2b_pauses_total counter");
        for r in PauseReason::ALL {
            let _ = writeln!(
                out,
                "locale2b_pauses_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.pauses(r)
            );
        }
        counter(
            &mut out,
            "locale2b_evictions_total",
            "Running sandboxes paused to make room for a create or resume.",
            &self.pauses[3],
        );
        counter(
            &mut out,
            "locale2b_resumes_total",
            "Sandboxes resumed.",
            &self.resumes,
        );
        counter(
            &mut out,
            "locale2b_resume_failures_total",
            "Resumes that failed (the sandbox stayed paused).",
            &self.resume_failures,
        );
        counter(
            &mut out,
            "locale2b_timeouts_total",
            "Lifetimes that ended.",
            &self.timeouts,
        );
        counter(
            &mut out,
            "locale2b_capacity_refusals_total",
            "Creates and resumes refused for capacity.",
            &self.capacity_refusals,
        );
        counter(
            &mut out,
            "locale2b_reaped_total",
            "Orphaned VMM processes, run directories, cgroups and snapshots removed by the reaper.",
            &self.reaped,
        );
        counter(
            &mut out,
            "locale2b_retention_destroys_total",
            "Paused sandboxes destroyed at the end of their retention.",
            &self.retention_destroys,
        );
        self.create_seconds.render(
            &mut out,
            "locale2b_create_seconds",
            "Time from create request to a running sandbox.",
        );
        self.exec_seconds.render(
            &mut out,
            "locale2b_exec_seconds",
            "Time of exec calls answered by the guest.",
        );
        self.pause_seconds
            .render(&mut out, "locale2b_pause_seconds", "Time of pauses.");
        self.resume_seconds
            .render(&mut out, "locale2b_resume_seconds", "Time of resumes.");

        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        let _ = writeln!(out, "# HELP locale2b_sandboxes Sandboxes by status.");
        let _ = writeln!(out, "# TYPE locale2b_sandboxes gauge");
        for (status, n) in &gauges.by_status {
            let _ = writeln!(out, "locale2b_sandboxes{{status=\"{status}\"}} {n}");
        }
        gauge(
            &mut out,
            "locale2b_max_sandboxes",
            "Most sandboxes that may hold a VM.",
            gauges.max_sandboxes,
        );
        gauge(
            &mut out,
            "locale2b_memory_nominal_mb",
            "Guest RAM of the sandboxes holding a VM, MiB.",
            gauges.memory_nominal_mb,
        );
        gauge(
            &mut out,
            "locale2b_memory_budget_mb",
            "Guest RAM budget, MiB.",
            gauges.memory_budget_mb,
        );
        gauge(
            &mut out,
            "locale2b_vmm_rss_mb",
            "Resident memory of all VMM processes (measured), MiB.",
            gauges.vmm_rss_mb,
        );
        gauge(
            &mut out,
            "locale2b_vmm_pss_mb",
            "PSS of all VMM processes (measured; memory shared between clones counted once), MiB.",
            gauges.vmm_pss_mb,
        );
        let _ = writeln!(
            out,
            "# HELP locale2b_sandbox_vmm_rss_mb Resident memory of one sandbox's VMM, MiB."
        );
        let _ = writeln!(out, "# TYPE locale2b_sandbox_vmm_rss_mb gauge");
        for (id, rss, _) in &gauges.per_sandbox {
            let _ = writeln!(
                out,
                "locale2b_sandbox_vmm_rss_mb{{sandbox_id=\"{id}\"}} {rss}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP locale2b_sandbox_cpu_percent CPU use of one sandbox's VMM over the last sample, percent of one core."
        );
        let _ = writeln!(out, "# TYPE locale2b_sandbox_cpu_percent gauge");
        for (id, _, cpu) in &gauges.per_sandbox {
            let _ = writeln!(
                out,
                "locale2b_sandbox_cpu_percent{{sandbox_id=\"{id}\"}} {cpu:.1}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(400));
        let mut out = String::new();
        h.render(&mut out, "t", "test");
        assert!(out.contains("t_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"300\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_count 3\n"), "{out}");
    }

    #[test]
    fn pauses_are_counted_by_reason() {
        let m = Metrics::default();
        m.paused(PauseReason::Idle, Duration::from_millis(5));
        m.paused(PauseReason::Eviction, Duration::from_millis(5));
        m.paused(PauseReason::Eviction, Duration::from_millis(5));
        let text = m.render(&Gauges::default());
        assert!(text.contains("locale2b_pauses_total{reason=\"idle\"} 1\n"));
        assert!(text.contains("locale2b_evictions_total 2\n"));
        assert_eq!(m.pause_seconds.count(), 3);
    }
}
