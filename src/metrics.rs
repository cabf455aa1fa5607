//! Process-wide metrics for `GET /metrics` (Prometheus text format 0.0.4), on
//! `prometheus-client`. What only this process sees (claim waits, dispatch latency, expiries,
//! heartbeats) lives in [`Metrics`], registered once; what describes stored state (runs per
//! status, steps, workers online) is read from the database when scraped and handed to
//! [`Metrics::render`] as a [`Snapshot`]. The lease and registry services count; the HTTP
//! layer renders.
//!
//! Adding a metric: a field on [`Metrics`] (a `Counter`, `Gauge`, `Histogram`, or a `Family`
//! of them keyed by a label struct deriving `EncodeLabelSet`), and one `register` line in
//! [`Metrics::new`]. Counters are registered without their `_total` suffix (the encoder adds
//! it) and help texts without a final full stop (the registry adds it).

use crate::domain::usage::StepUsage;
use crate::domain::{RunStatus, StepPhase, StepStatus};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Everything this process counts itself. Clones of a metric share its value, so the
/// registry holds clones and callers use the fields.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Time a claim waited before it was answered.
    pub claim_wait: Histogram,
    /// Time from a step being queued to its lease being granted.
    pub step_dispatch: Histogram,
    pub lease_expired: Counter,
    pub lease_released: Counter,
    pub step_retry: Counter,
    pub heartbeats: Counter,
    /// Tokens agents reported, by model and kind (`input`, `output`, `cache_creation`,
    /// `cache_read`).
    agent_tokens: Family<ModelKind, Counter>,
    /// Dollars agents reported, by model.
    agent_cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Stored state, read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub workers_online: i64,
    pub runs_by_status: Vec<(String, i64)>,
    pub steps_by_phase_status: Vec<(String, String, i64)>,
    /// On Postgres, completion batches written and the completions they carried.
    pub completion_batches: Option<(u64, u64)>,
    /// Each agent account's limit now: (account, limit, steps running, paused).
    pub accounts: Vec<(String, i64, i64, bool)>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelKind {
    model: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseStatus {
    phase: String,
    status: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let histogram = || Histogram::new(BUCKETS);
        let m = Metrics {
            registry: Registry::default(),
            claim_wait: histogram(),
            step_dispatch: histogram(),
            lease_expired: Counter::default(),
            lease_released: Counter::default(),
            step_retry: Counter::default(),
            heartbeats: Counter::default(),
            agent_tokens: Family::default(),
            agent_cost: Family::default(),
        };
        let mut r = Registry::default();
        r.register(
            "loopd_lease_expired",
            "Leases that expired and were requeued",
            m.lease_expired.clone(),
        );
        r.register(
            "loopd_lease_released",
            "Leases handed back or taken from offline or revoked workers",
            m.lease_released.clone(),
        );
        r.register(
            "loopd_step_retry",
            "Steps put back in the queue after losing their lease",
            m.step_retry.clone(),
        );
        r.register(
            "loopd_heartbeats",
            "Worker heartbeats received",
            m.heartbeats.clone(),
        );
        r.register(
            "loopd_claim_wait_seconds",
            "Time a claim waited before it was answered",
            m.claim_wait.clone(),
        );
        r.register(
            "loopd_step_dispatch_seconds",
            "Time from a step being queued to its lease being granted",
            m.step_dispatch.clone(),
        );
        r.register(
            "loopd_agent_tokens",
            "Tokens agent steps reported, by model and kind",
            m.agent_tokens.clone(),
        );
        r.register(
            "loopd_agent_cost_usd",
            "Dollars agent steps reported, by model",
            m.agent_cost.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts what one agent step of `model` reported it spent.
    pub fn count_usage(&self, model: &str, u: &StepUsage) {
        for (kind, n) in [
            ("input", u.input_tokens),
            ("output", u.output_tokens),
            ("cache_creation", u.cache_creation_input_tokens),
            ("cache_read", u.cache_read_input_tokens),
        ] {
            let label = ModelKind {
                model: model.to_string(),
                kind,
            };
            self.agent_tokens.get_or_create(&label).inc_by(n);
        }
        let label = ModelLabel {
            model: model.to_string(),
        };
        self.agent_cost
            .get_or_create(&label)
            .inc_by(u.total_cost_usd);
    }

    /// The Prometheus text exposition of `snap` (stored state) and this process's metrics.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &stored_state(snap));
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// A registry for one scrape's stored state: built fresh, so a status no longer present
/// disappears rather than keeping its last value.
fn stored_state(snap: &Snapshot) -> Registry {
    let mut r = Registry::default();
    let online = Gauge::<i64>::default();
    online.set(snap.workers_online);
    r.register(
        "loopd_workers_online",
        "Workers that are idle, busy or draining",
        online,
    );
    // Every known label set is present (at 0 when none), so series never vanish and appear.
    let runs = Family::<StatusLabel, Gauge>::default();
    for status in RunStatus::ALL {
        let _ = runs.get_or_create(&StatusLabel {
            status: status.as_str().into(),
        });
    }
    for (status, n) in &snap.runs_by_status {
        let label = StatusLabel {
            status: status.clone(),
        };
        runs.get_or_create(&label).set(*n);
    }
    r.register("loopd_runs", "Runs per status", runs);
    // A finished step never changes status again and steps are never deleted, so the count
    // of finished steps only grows: a counter. The others come and go: a gauge.
    let finished = Family::<PhaseStatus, Counter>::default();
    let active = Family::<PhaseStatus, Gauge>::default();
    for (phase, status) in StepPhase::ALL
        .iter()
        .flat_map(|p| StepStatus::ALL.iter().map(move |s| (p, s)))
    {
        let label = PhaseStatus {
            phase: phase.as_str().into(),
            status: status.as_str().into(),
        };
        if status.is_terminal() {
            let _ = finished.get_or_create(&label);
        } else {
            let _ = active.get_or_create(&label);
        }
    }
    for (phase, status, n) in &snap.steps_by_phase_status {
        let label = PhaseStatus {
            phase: phase.clone(),
            status: status.clone(),
        };
        let is_finished = status.parse().is_ok_and(StepStatus::is_terminal);
        if is_finished {
            finished
                .get_or_create(&label)
                .inc_by(u64::try_from(*n).unwrap_or(0));
        } else {
            active.get_or_create(&label).set(*n);
        }
    }
    r.register(
        "loopd_steps",
        "Steps finished, per phase and final status",
        finished,
    );
    r.register(
        "loopd_steps_active",
        "Steps not finished yet (queued, in progress, retrying), per phase and status",
        active,
    );
    if !snap.accounts.is_empty() {
        let (limit, in_use, paused) = (
            Family::<AccountLabel, Gauge>::default(),
            Family::<AccountLabel, Gauge>::default(),
            Family::<AccountLabel, Gauge>::default(),
        );
        for (account, l, n, p) in &snap.accounts {
            let label = AccountLabel {
                account: account.clone(),
            };
            limit.get_or_create(&label).set(*l);
            in_use.get_or_create(&label).set(*n);
            paused.get_or_create(&label).set(i64::from(*p));
        }
        r.register(
            "loopd_agent_account_limit",
            "Steps of an agent account that may run at once (adaptive, [api_limits])",
            limit,
        );
        r.register(
            "loopd_agent_account_in_use",
            "Steps of an agent account running now",
            in_use,
        );
        r.register(
            "loopd_agent_account_paused",
            "1 while an agent account is paused after a usage limit",
            paused,
        );
    }
    if let Some((batches, items)) = snap.completion_batches {
        let (b, i): (Counter, Counter) = (Counter::default(), Counter::default());
        b.inc_by(batches);
        i.inc_by(items);
        r.register(
            "loopd_completion_batches",
            "Statements that wrote completions queued together (Postgres)",
            b,
        );
        r.register(
            "loopd_completion_batch_items",
            "Completions those statements carried",
            i,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RunStatus, StepStatus};

    #[test]
    fn histograms_are_cumulative_and_render_every_metric_name() {
        let m = Metrics::default();
        m.step_dispatch.observe(0.002);
        m.step_dispatch.observe(0.2);
        m.lease_expired.inc();
        let text = m.render(&Snapshot {
            completion_batches: Some((2, 7)),
            accounts: vec![("opus:claude:0123abcd".into(), 3, 2, true)],
            ..Snapshot::default()
        });
        for line in [
            "loopd_agent_account_limit{account=\"opus:claude:0123abcd\"} 3",
            "loopd_agent_account_in_use{account=\"opus:claude:0123abcd\"} 2",
            "loopd_agent_account_paused{account=\"opus:claude:0123abcd\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(text.contains("loopd_completion_batch_items_total 7"));
        assert!(text.contains("loopd_lease_expired_total 1\n"), "{text}");
        assert!(text.contains("# TYPE loopd_lease_expired_total counter"));
        assert!(text.contains("loopd_step_dispatch_seconds_bucket{le=\"0.0025\"} 1"));
        assert!(text.contains("loopd_step_dispatch_seconds_bucket{le=\"0.25\"} 2"));
        assert!(text.contains("loopd_step_dispatch_seconds_count 2"));
        for name in [
            "loopd_workers_online 0",
            "loopd_step_retry_total 0",
            "loopd_heartbeats_total 0",
            "loopd_claim_wait_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }

    #[test]
    fn finished_steps_are_a_counter_and_the_others_a_gauge_named_for_them() {
        let text = Metrics::default().render(&Snapshot {
            runs_by_status: vec![(RunStatus::Running.to_string(), 2)],
            steps_by_phase_status: vec![
                (
                    "implementation".into(),
                    StepStatus::Succeeded.to_string(),
                    3,
                ),
                ("review".into(), StepStatus::Queued.to_string(), 1),
            ],
            ..Snapshot::default()
        });
        for line in [
            "# TYPE loopd_steps_total counter",
            "loopd_steps_total{phase=\"implementation\",status=\"SUCCEEDED\"} 3",
            "# TYPE loopd_steps_active gauge",
            "loopd_steps_active{phase=\"review\",status=\"QUEUED\"} 1",
            "# TYPE loopd_runs gauge",
            "loopd_runs{status=\"RUNNING\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // Known label sets are there at 0; a status never counts as both.
        assert!(text.contains("loopd_runs{status=\"PAUSED\"} 0"), "{text}");
        assert!(text.contains("loopd_steps_total{phase=\"merge\",status=\"FAILED\"} 0"));
        assert!(!text.contains("loopd_steps_total{phase=\"review\",status=\"QUEUED\""));
        assert!(!text.contains("loopd_steps_active{phase=\"review\",status=\"FAILED\""));
    }
}
