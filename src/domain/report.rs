//! The two files written when a run ends: `report.tsv` (one row per run/iteration event, the
//! old daemon's columns) and `summary.json`. Pure: built from what the scheduler stored.

use serde_json::json;

/// One step as the report needs it.
#[derive(Debug, Clone, Default)]
pub struct StepFacts {
    pub phase: String,
    pub attempt: i32,
    pub status: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub exit_code: Option<i32>,
    pub output_path: Option<String>,
    pub output_tail: Option<String>,
    pub completion_detected: bool,
}

/// The run as the report needs it.
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    pub run_id: String,
    pub started_at: Option<i64>,
    pub ended_at: i64,
    pub model: String,
    pub completion_mode: String,
    /// `complete_plan`, `iterations_exhausted`, `claude_failed`, `failed` or `canceled`.
    pub exit_reason: String,
    pub message: String,
    pub steps: Vec<StepFacts>,
    /// (prompt_before, prompt_after, timestamp) of each watchdog rewrite.
    pub rewrites: Vec<(String, i64)>,
    pub tasks: Option<(usize, usize)>,
}

pub const REPORT_HEADER: &str = "timestamp_ms\tkind\titeration\tduration_ms\texit_code\toutput_bytes\toutput_lines\toutput_path\tmessage\ttasks_done\ttasks_total";

fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// `report.tsv`: a header and one TAB-separated row per event.
pub fn report_tsv(r: &RunFacts) -> String {
    let (done, total) = r
        .tasks
        .map(|(d, t)| (d.to_string(), t.to_string()))
        .unwrap_or_default();
    let mut rows: Vec<(i64, String)> = Vec::new();
    let mut row = |ts: i64,
                   kind: &str,
                   it: String,
                   dur: String,
                   code: String,
                   bytes: String,
                   lines: String,
                   path: &str,
                   msg: &str| {
        rows.push((
            ts,
            format!(
                "{ts}\t{kind}\t{it}\t{dur}\t{code}\t{bytes}\t{lines}\t{}\t{}\t{done}\t{total}",
                clean(path),
                clean(msg)
            ),
        ));
    };
    let e = String::new;
    if let Some(start) = r.started_at {
        row(start, "RUN_START", e(), e(), e(), e(), e(), "", &r.model);
    }
    for s in r.steps.iter().filter(|s| s.phase == "implementation") {
        let it = s.attempt.to_string();
        if let Some(st) = s.started_at {
            row(
                st,
                "ITERATION_START",
                it.clone(),
                e(),
                e(),
                e(),
                e(),
                "",
                "",
            );
        }
        if let Some(end) = s.ended_at {
            let dur = s
                .started_at
                .map(|st| (end - st).to_string())
                .unwrap_or_default();
            let tail = s.output_tail.as_deref().unwrap_or("");
            let code = s.exit_code.map(|c| c.to_string()).unwrap_or_default();
            let path = s.output_path.as_deref().unwrap_or("");
            row(
                end,
                "ITERATION_END",
                it.clone(),
                dur,
                code,
                tail.len().to_string(),
                tail.lines().count().to_string(),
                path,
                &s.status,
            );
            if s.completion_detected {
                row(
                    end,
                    "COMPLETE_DETECTED",
                    it,
                    e(),
                    e(),
                    e(),
                    e(),
                    "",
                    &r.completion_mode,
                );
            }
        }
    }
    for (name, ts) in &r.rewrites {
        row(*ts, "WATCHDOG_REWRITE", e(), e(), e(), e(), e(), name, "");
    }
    let total_ms = r
        .started_at
        .map(|s| (r.ended_at - s).to_string())
        .unwrap_or_default();
    row(
        r.ended_at,
        "RUN_END",
        e(),
        total_ms,
        e(),
        e(),
        e(),
        "",
        &format!("{} {}", r.exit_reason, r.message),
    );
    rows.sort_by_key(|(ts, _)| *ts);
    let mut out = String::from(REPORT_HEADER);
    out.push('\n');
    for (_, line) in rows {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `summary.json`, pretty-printed.
pub fn summary_json(r: &RunFacts) -> String {
    let impls: Vec<&StepFacts> = r
        .steps
        .iter()
        .filter(|s| s.phase == "implementation")
        .collect();
    let durations: Vec<i64> = impls
        .iter()
        .filter_map(|s| Some(s.ended_at? - s.started_at?))
        .collect();
    let avg = if durations.is_empty() {
        0
    } else {
        durations.iter().sum::<i64>() / durations.len() as i64
    };
    let completed = impls
        .iter()
        .find(|s| s.completion_detected)
        .map(|s| s.attempt);
    let last = impls.last();
    let start = r.started_at.unwrap_or(r.ended_at);
    let v = json!({
        "run_id": r.run_id,
        "start_ms": start,
        "end_ms": r.ended_at,
        "total_duration_ms": r.ended_at - start,
        "iterations_run": impls.len(),
        "completed_iteration": completed,
        "avg_duration_ms": avg,
        "last_exit_code": last.and_then(|s| s.exit_code),
        "completion_mode": r.completion_mode,
        "model": r.model,
        "exit_reason": r.exit_reason,
        "message": r.message,
        "run_log": "report.tsv",
        "run_report": "report.tsv",
        "prompt_snapshot": "prompt.txt",
        "last_iteration_tail": last.map(|s| format!("iter-{:02}-impl.tail.txt", s.attempt)),
        "last_iteration_log": last.and_then(|s| s.output_path.clone()),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The exit reason word for a failure reason.
pub fn exit_reason(completed: bool, canceled: bool, reason: &str) -> &'static str {
    if completed {
        "complete_plan"
    } else if canceled {
        "canceled"
    } else if reason.starts_with("iteration_limit_reached") {
        "iterations_exhausted"
    } else if reason.starts_with("runner_execution_failed") {
        "claude_failed"
    } else {
        "failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_the_old_columns_and_a_row_per_iteration() {
        let r = RunFacts {
            run_id: "r".into(),
            started_at: Some(1000),
            ended_at: 5000,
            model: "opus".into(),
            completion_mode: "trailing".into(),
            exit_reason: "complete_plan".into(),
            steps: vec![StepFacts {
                phase: "implementation".into(),
                attempt: 1,
                status: "SUCCEEDED".into(),
                started_at: Some(1100),
                ended_at: Some(2100),
                exit_code: Some(0),
                output_tail: Some("a\nb\n".into()),
                completion_detected: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let tsv = report_tsv(&r);
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines[0], REPORT_HEADER);
        let kinds: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split('\t').nth(1).unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "RUN_START",
                "ITERATION_START",
                "ITERATION_END",
                "COMPLETE_DETECTED",
                "RUN_END"
            ]
        );
        assert!(lines.iter().all(|l| l.split('\t').count() == 11));
        let s: serde_json::Value = serde_json::from_str(&summary_json(&r)).unwrap();
        assert_eq!(s["iterations_run"], 1);
        assert_eq!(s["completed_iteration"], 1);
        assert_eq!(s["total_duration_ms"], 4000);
    }
}
