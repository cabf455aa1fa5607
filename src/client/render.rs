//! Tables for people, JSON for scripts. Every cell and value goes through
//! [`escaped`]: a name holding a newline or an escape sequence (stored before the daemon
//! refused them, or from another source) is shown escaped, never acted on by the terminal.

use crate::api::{AccountInfo, ArtifactInfo, Run, RunDiff, Step, WorkerInfo, WorktreesEnvelope};
use crate::domain::text::escaped;
use crate::domain::usage::cost_text;
use crate::domain::RunStatus;

/// Prints `raw` as JSON when asked, else the table `table` builds.
pub fn print(json: bool, raw: &serde_json::Value, table: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(raw).unwrap_or_default());
    } else {
        print!("{}", table());
    }
}

/// Left-aligned columns sized to their widest cell (its display width), two spaces apart,
/// without borders; comfy-table lays them out, never wrapping (the terminal's width is not
/// asked: its `tty` feature is off).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_header(header.iter().map(|h| escaped(h)).collect::<Vec<_>>())
        .add_rows(
            rows.iter()
                .map(|r| r.iter().map(|c| escaped(c)).collect::<Vec<_>>()),
        );
    for col in t.column_iter_mut() {
        col.set_padding((0, 2));
    }
    let mut out = t.trim_fmt();
    out.push('\n');
    out
}

fn short_time(rfc: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|_| rfc.to_string())
}

fn last_segment(path: &str) -> String {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .to_string()
}

pub fn runs(runs: &[Run]) -> String {
    if runs.is_empty() {
        return "No runs found.\n".into();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.status.to_string(),
                last_segment(&r.workspace_root),
                short_time(&r.created_at),
                r.usage
                    .as_ref()
                    .map(|u| cost_text(u.total_cost_usd))
                    .unwrap_or_else(|| "-".into()),
                r.waiting_reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "WORKSPACE",
            "CREATED",
            "COST",
            "WAITING",
        ],
        &rows,
    )
}

pub fn inspect(run: &Run, steps: &[Step]) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| out.push_str(&format!("{k:<16} {}\n", escaped(v)));
    kv("id", &run.id);
    kv("name", &format!("{} ({})", run.name, run.name_source));
    kv("status", run.status.as_str());
    kv("workspace", &run.workspace_root);
    kv("spec", &run.spec_path);
    kv("plan", run.plan_path.as_deref().unwrap_or("-"));
    if let Some(w) = &run.worktree {
        kv("base branch", &w.base_branch);
        kv("run branch", &w.run_branch);
        kv(
            "merge",
            &format!(
                "{} -> {}",
                w.merge_strategy,
                w.merge_target_branch.as_deref().unwrap_or("-")
            ),
        );
        kv("worktree", &w.worktree_path);
    }
    if let Some(s) = &run.worktree_cleanup_status {
        kv("cleanup", s);
    }
    if let Some(r) = &run.waiting_reason {
        kv("waiting", r);
    }
    if let Some(r) = &run.failure_reason {
        kv("failure", r);
    }
    if let Some(u) = &run.usage {
        kv("cost", &cost_text(u.total_cost_usd));
        kv(
            "tokens",
            &format!(
                "{} in, {} out, {} cache write, {} cache read",
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens
            ),
        );
        kv("agent turns", &u.num_turns.to_string());
    }
    kv("created", &short_time(&run.created_at));
    kv("updated", &short_time(&run.updated_at));
    out.push('\n');
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.phase.to_string(),
                s.status.to_string(),
                s.attempt.to_string(),
                s.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                s.worker_id.clone().unwrap_or_else(|| "-".into()),
                s.usage
                    .as_ref()
                    .map(|u| format!("{} {}t", cost_text(u.total_cost_usd), u.tokens()))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "STEP", "PHASE", "STATUS", "ATTEMPT", "EXIT", "WORKER", "USAGE",
        ],
        &rows,
    ));
    out
}

pub fn workers(ws: &[WorkerInfo]) -> String {
    if ws.is_empty() {
        return "No workers registered.\n".into();
    }
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.hostname.clone(),
                w.status.to_string(),
                w.labels.join(","),
                w.slots.to_string(),
                w.leases.len().to_string(),
                short_time(&w.last_heartbeat_at),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HOST",
            "STATUS",
            "LABELS",
            "SLOTS",
            "LEASES",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// The agent accounts' limits, below the workers (nothing when there are none).
pub fn accounts(list: &[AccountInfo]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let signal = match (&a.last_signal, &a.last_signal_at) {
                (Some(k), Some(at)) => format!("{k} {}", short_time(at)),
                _ => "-".into(),
            };
            vec![
                a.account.clone(),
                format!("{}/{}", a.limit, a.max_concurrent),
                a.in_use.to_string(),
                signal,
                a.paused_until
                    .as_deref()
                    .map(short_time)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    format!(
        "\nAgent accounts:\n{}",
        table(
            &["ACCOUNT", "LIMIT", "IN USE", "LAST SIGNAL", "PAUSED UNTIL"],
            &rows
        )
    )
}

pub fn artifacts(list: &[ArtifactInfo]) -> String {
    if list.is_empty() {
        return "No artifacts.\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.kind.clone(),
                a.size.to_string(),
                a.sha256.clone(),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "SIZE", "SHA256"], &rows)
}

fn short_sha(sha: &str) -> String {
    sha.chars().take(10).collect()
}

/// A run's diff: a summary line, its commits, its files, and with `patch` each file's patch
/// (control characters escaped line by line, tabs kept).
pub fn diff(d: &RunDiff, patch: bool) -> String {
    let mut out = format!(
        "{}..{}: {} file(s) changed, +{} -{}\n",
        escaped(&d.base_ref),
        escaped(&d.head_ref),
        d.stats.files_changed,
        d.stats.additions,
        d.stats.deletions
    );
    if d.commits.is_empty() {
        out.push_str("\nNo commits.\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .commits
            .iter()
            .map(|c| {
                vec![
                    short_sha(&c.sha),
                    short_time(&c.timestamp),
                    c.author.clone(),
                    format!("+{} -{}", c.stats.additions, c.stats.deletions),
                    c.message.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["COMMIT", "DATE", "AUTHOR", "LINES", "MESSAGE"],
            &rows,
        ));
    }
    if !d.files.is_empty() {
        let rows: Vec<Vec<String>> = d
            .files
            .iter()
            .map(|f| {
                let path = match &f.old_path {
                    Some(old) => format!("{old} -> {}", f.path),
                    None => f.path.clone(),
                };
                vec![
                    f.status.clone(),
                    format!("+{} -{}", f.additions, f.deletions),
                    path,
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["STATUS", "LINES", "FILE"], &rows));
    }
    if patch {
        for f in &d.files {
            out.push('\n');
            for line in f.patch.lines() {
                let parts: Vec<String> = line.split('\t').map(escaped).collect();
                out.push_str(&parts.join("\t"));
                out.push('\n');
            }
        }
    }
    out
}

/// A postmortem's answer: its status and directory, then each report (or prompt) and its file.
pub fn postmortem(id: &str, v: &serde_json::Value) -> String {
    let status = v["status"].as_str().unwrap_or("?");
    let dir = v["analysis_dir"].as_str().unwrap_or("-");
    let mut out = format!("Postmortem of run {}: {}\n", escaped(id), escaped(status));
    out.push_str(&format!("analysis: {}\n\n", escaped(dir)));
    let (header, list) = if status == "prompt_only" {
        ("PROMPT", &v["prompts"])
    } else {
        ("REPORT", &v["reports"])
    };
    let rows: Vec<Vec<String>> = ["spec_compliance", "run_quality", "summary"]
        .iter()
        .map(|k| {
            vec![
                k.replace('_', "-"),
                list[k].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&[header, "FILE"], &rows));
    out
}

/// Why a listed worktree is still there.
fn kept_because(status: Option<&str>, cleanup: Option<&str>) -> String {
    match (status, cleanup) {
        (None, _) => "not a run's".into(),
        (Some(s), _) if s.parse::<RunStatus>().is_ok_and(|s| !s.is_terminal()) => {
            "run not ended".into()
        }
        (_, Some("deferred")) => "awaiting review".into(),
        (_, Some("skipped")) => "worktree_cleanup=false".into(),
        (_, Some("failed")) => "removal failed".into(),
        (_, None) => "never cleaned up".into(),
        (_, Some(other)) => format!("left behind ({other})"),
    }
}

/// A workspace's worktrees, each with its run and why it is kept.
pub fn worktrees(w: &WorktreesEnvelope) -> String {
    if w.worktrees.is_empty() {
        return format!("No worktrees in {}.\n", escaped(&w.workspace));
    }
    let rows: Vec<Vec<String>> = w
        .worktrees
        .iter()
        .map(|t| {
            vec![
                t.path.clone(),
                t.branch.clone().unwrap_or_else(|| "(detached)".into()),
                t.run_id.clone().unwrap_or_else(|| "-".into()),
                t.run_status.clone().unwrap_or_else(|| "-".into()),
                kept_because(t.run_status.as_deref(), t.cleanup_status.as_deref()),
                t.remove_after
                    .as_deref()
                    .map(short_time)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["PATH", "BRANCH", "RUN", "STATUS", "KEPT", "REMOVE AFTER"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_under_their_headers() {
        let t = super::table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }

    #[test]
    fn names_with_control_characters_are_printed_escaped() {
        let t = super::table(&["NAME"], &[vec!["a\nb\u{1b}[2J".into()]]);
        assert_eq!(t, "NAME\na\\nb\\u{1b}[2J\n");
    }

    #[test]
    fn wide_characters_take_their_display_width() {
        let t = super::table(&["NAME", "ID"], &[vec!["日本".into(), "1".into()]]);
        assert_eq!(t, "NAME  ID\n日本  1\n");
    }

    #[test]
    fn a_worktree_of_a_run_not_ended_says_so_whatever_its_cleanup() {
        use super::kept_because;
        use crate::domain::RunStatus::*;
        for status in [Pending, Running, Paused] {
            assert_eq!(kept_because(Some(status.as_str()), None), "run not ended");
        }
        let (done, failed) = (Completed.as_str(), Failed.as_str());
        assert_eq!(
            kept_because(Some(done), Some("deferred")),
            "awaiting review"
        );
        assert_eq!(kept_because(Some(failed), None), "never cleaned up");
        assert_eq!(kept_because(None, None), "not a run's");
    }
}
