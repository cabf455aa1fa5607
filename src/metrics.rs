//! Process-wide counters and histograms for `GET /metrics` (Prometheus text format). Gauges
//! that describe stored state (runs per status, workers online) are read from the database
//! when scraped; what only this process sees (claim waits, dispatch latency, expiries) is
//! counted here with atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the histogram buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds (atomics have no f64 add).
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let s = seconds.max(0.0);
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((s * 1_000_000.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything this process counts itself.
#[derive(Debug, Default)]
pub struct Metrics {
    pub claim_wait: Histogram,
    pub step_dispatch: Histogram,
    pub lease_expired_total: AtomicU64,
    pub lease_released_total: AtomicU64,
    pub step_retry_total: AtomicU64,
    pub heartbeats_total: AtomicU64,
}

/// Stored-state gauges, read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub workers_online: i64,
    pub runs_by_status: Vec<(String, i64)>,
    pub steps_by_phase_status: Vec<(String, String, i64)>,
    /// On Postgres, completion batches written and the completions they carried.
    pub completion_batches: Option<(u64, u64)>,
}

impl Metrics {
    /// The Prometheus text exposition of the counters plus `snapshot`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP loopd_workers_online Workers that are idle, busy or draining.\n# TYPE loopd_workers_online gauge\nloopd_workers_online {}",
            snap.workers_online
        );
        let _ = writeln!(
            out,
            "# HELP loopd_runs Runs per status.\n# TYPE loopd_runs gauge"
        );
        for (status, n) in &snap.runs_by_status {
            let _ = writeln!(out, "loopd_runs{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP loopd_steps_total Steps per phase and status.\n# TYPE loopd_steps_total counter"
        );
        for (phase, status, n) in &snap.steps_by_phase_status {
            let _ = writeln!(
                out,
                "loopd_steps_total{{phase=\"{phase}\",status=\"{status}\"}} {n}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "loopd_lease_expired_total",
            "Leases that expired and were requeued.",
            load(&self.lease_expired_total),
        );
        counter(
            &mut out,
            "loopd_lease_released_total",
            "Leases handed back or taken from offline or revoked workers.",
            load(&self.lease_released_total),
        );
        counter(
            &mut out,
            "loopd_step_retry_total",
            "Steps put back in the queue after losing their lease.",
            load(&self.step_retry_total),
        );
        counter(
            &mut out,
            "loopd_heartbeats_total",
            "Worker heartbeats received.",
            load(&self.heartbeats_total),
        );
        if let Some((batches, items)) = snap.completion_batches {
            counter(
                &mut out,
                "loopd_completion_batches_total",
                "Statements that wrote completions queued together (Postgres).",
                batches,
            );
            counter(
                &mut out,
                "loopd_completion_batch_items_total",
                "Completions those statements carried.",
                items,
            );
        }
        self.claim_wait.render(
            "loopd_claim_wait_seconds",
            "Time a claim waited before it was answered.",
            &mut out,
        );
        self.step_dispatch.render(
            "loopd_step_dispatch_seconds",
            "Time from a step being queued to its lease being granted.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_render_every_metric_name() {
        let m = Metrics::default();
        m.step_dispatch.observe(0.002);
        m.step_dispatch.observe(0.2);
        let text = m.render(&Snapshot {
            completion_batches: Some((2, 7)),
            ..Snapshot::default()
        });
        assert!(text.contains("loopd_completion_batch_items_total 7"));
        assert!(text.contains("loopd_step_dispatch_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("loopd_step_dispatch_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("loopd_step_dispatch_seconds_count 2"));
        for name in [
            "loopd_workers_online",
            "loopd_lease_expired_total",
            "loopd_step_retry_total",
            "loopd_claim_wait_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
