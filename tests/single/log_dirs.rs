//! A run's files where the existing daemon kept them, for the tools that read them there:
//! `<ws>/logs/loop/run-<id>/` and `<data dir>/runs/run-<id>/` (`artifact_mode=mirror`, the
//! default), or only one of them, at `log_dir` / `global_log_dir`; each copy is the artifact
//! the API serves, byte for byte, and `report.tsv` / `summary.json` have the old formats; in a
//! workspace that does not ignore them, loopd excludes them locally, so a merge is not refused.

use crate::helpers::Single;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const REPORT_HEADER: &str = "timestamp_ms\tkind\titeration\tduration_ms\texit_code\toutput_bytes\toutput_lines\toutput_path\tmessage\ttasks_done\ttasks_total";

/// Each artifact of the run is in `dir` with the same bytes; the names.
async fn copies_match(s: &Single, id: &str, dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for a in s.artifacts(id).await {
        let name = a["name"].as_str().expect("name").to_string();
        let bytes = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", dir.display()));
        assert_eq!(hex::encode(Sha256::digest(&bytes)), a["sha256"], "{name}");
        names.push(name);
    }
    names
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().expect("canonical")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_files_are_in_the_workspace_and_the_global_log_directory() {
    let s = Single::start("log-dirs", &[]).await;
    let repo = s.repo("ws", 2, "tick", &["verify_cmds=true"]);
    let id = s.create(&repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let local = canonical(&repo.path).join(format!("logs/loop/run-{id}"));
    let global = s.daemon.data_dir.join(format!("runs/run-{id}"));
    let names = copies_match(&s, &id, &local).await;
    assert_eq!(copies_match(&s, &id, &global).await, names);
    for want in [
        "prompt.txt",
        "review-prompt.txt",
        "iter-01-impl.log",
        "iter-02-impl.tail.txt",
        "iter-01-review.log",
        "iter-01-verify.log",
        "report.tsv",
        "summary.json",
        "review-diff.json",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }

    // What `loopctl analyze --prompt-only` and `bin/loop-analyze` parse.
    let report = std::fs::read_to_string(local.join("report.tsv")).expect("report.tsv");
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some(REPORT_HEADER));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 11), "{report}");
    let ends: Vec<&Vec<&str>> = rows.iter().filter(|r| r[1] == "ITERATION_END").collect();
    assert_eq!(ends.len(), 3, "three implementation steps: {report}");
    assert_eq!(ends[0][2], "1");
    assert_eq!(ends[0][7], "iter-01-impl.log");
    assert!(rows.iter().any(|r| r[1] == "COMPLETE_DETECTED"), "{report}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(local.join("summary.json")).expect("file"))
            .expect("summary.json parses");
    assert_eq!(summary["run_id"], id.as_str());
    assert_eq!(summary["exit_reason"], "complete_plan");
    assert_eq!(summary["iterations_run"], 3);
    assert_eq!(summary["run_report"], "report.tsv");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_mode_and_the_log_directories_are_the_run_s_to_choose() {
    let s = Single::start("log-dirs-modes", &[]).await;
    let ws_repo = s.repo(
        "ws",
        1,
        "tick",
        &["artifact_mode=workspace", "log_dir=logs/custom"],
    );
    let id = s.create(&ws_repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let local = canonical(&ws_repo.path).join(format!("logs/custom/run-{id}"));
    copies_match(&s, &id, &local).await;
    assert!(!s.daemon.data_dir.join(format!("runs/run-{id}")).exists());
    assert!(!ws_repo
        .path
        .join(format!("logs/loop/run-{id}/report.tsv"))
        .exists());

    let global_root = s.dir.path().join("global-logs");
    let g_repo = s.repo(
        "g",
        1,
        "tick",
        &[
            "artifact_mode=global",
            &format!("global_log_dir={}", global_root.display()),
        ],
    );
    let id = s.create(&g_repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    copies_match(&s, &id, &global_root.join(format!("runs/run-{id}"))).await;
    assert!(!g_repo
        .path
        .join(format!("logs/loop/run-{id}/report.tsv"))
        .exists());
    assert!(!s.daemon.data_dir.join(format!("runs/run-{id}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_dir_is_excluded_locally_so_a_run_in_a_workspace_without_gitignore_merges() {
    let s = Single::start("log-dirs-exclude", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    repo.git(&["rm", "-q", ".gitignore"]);
    repo.git(&["commit", "-q", "-m", "no gitignore"]);
    let id = s.create(&repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let local = repo.path.join(format!("logs/loop/run-{id}"));
    assert!(local.join("report.tsv").is_file(), "the copies are there");
    assert_eq!(repo.git(&["status", "--porcelain"]), "", "nothing shows");
    let exclude = std::fs::read_to_string(repo.path.join(".git/info/exclude")).expect("exclude");
    assert_eq!(exclude.matches("/logs/loop/").count(), 1, "{exclude}");
    assert_eq!(repo.git(&["ls-files", "logs"]), "", "never committed");

    let (status, body) = s.post(&format!("/runs/{id}/merge"), None).await;
    assert_eq!(status, 200, "not dirty_checkout: {body}");
    assert_eq!(
        repo.git(&["rev-parse", "main"]).trim(),
        body["commit"].as_str().expect("commit")
    );
    assert!(
        repo.path.join("task-1.txt").exists(),
        "the checkout was updated"
    );
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
}
