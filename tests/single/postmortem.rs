//! The postmortem of an ended run (`POST`/`GET /runs/{id}/postmortem`): the git snapshot and
//! prompts in `<ws>/logs/loop/run-<id>/analysis/`, three agent steps of phase `postmortem`
//! (spec compliance, run quality, then the summary quoting both) whose outputs become the
//! reports and whose logs are artifacts; `prompt_only` runs nothing; a run still going is
//! refused.

use crate::helpers::Single;
use serde_json::{json, Value};
use std::path::PathBuf;

fn postmortem_steps(steps: &[Value]) -> Vec<&Value> {
    steps
        .iter()
        .filter(|s| s["phase"] == "postmortem")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postmortem_runs_three_agent_steps_and_writes_the_reports() {
    let s = Single::start("postmortem", &[]).await;
    let fake = crate::support::fake_agent();
    let repo = s.repo(
        "ws",
        1,
        "tick",
        &[&format!(
            "agent_cmd=env LOOPD_TEST_MODEL={{model}} sh {fake} tick"
        )],
    );
    let id = s.create(&repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let before = s.steps(&id).await.len();
    let analysis = repo
        .path
        .canonicalize()
        .expect("canonical")
        .join(format!("logs/loop/run-{id}/analysis"));

    // prompt_only: the files, no step.
    let (code, v) = s
        .post(
            &format!("/runs/{id}/postmortem"),
            Some(json!({"prompt_only": true})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "prompt_only");
    assert_eq!(v["analysis_dir"], analysis.display().to_string());
    let spec_prompt = PathBuf::from(v["prompts"]["spec_compliance"].as_str().expect("path"));
    assert_eq!(spec_prompt, analysis.join("spec-compliance-prompt.txt"));
    let text = std::fs::read_to_string(&spec_prompt).expect("prompt file");
    assert!(
        text.starts_with("loopd postmortem: spec-compliance") && text.contains("specs/demo.md"),
        "{text}"
    );
    let status = std::fs::read_to_string(analysis.join("git-status.txt")).expect("git status");
    assert!(
        status.starts_with("## run/"),
        "the run's worktree: {status}"
    );
    let commit = std::fs::read_to_string(analysis.join("git-last-commit.txt")).expect("commit");
    assert!(commit.contains("task 1: task number 1"), "{commit}");
    assert_eq!(s.steps(&id).await.len(), before, "prompt_only runs nothing");
    let listed = s.get_json(&format!("/runs/{id}/postmortem")).await;
    let exists: Vec<(String, bool)> = listed["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| {
            let p = PathBuf::from(a["path"].as_str().unwrap_or_default());
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            (name, a["exists"].as_bool().unwrap_or(false))
        })
        .collect();
    let want: Vec<(String, bool)> = [
        ("run-quality-prompt.txt", true),
        ("run-quality.md", false),
        ("spec-compliance-prompt.txt", true),
        ("spec-compliance.md", false),
        ("summary-prompt.txt", true),
        ("summary.md", false),
        ("git-status.txt", true),
        ("git-last-commit.txt", true),
        ("git-last-commit.patch", true),
        ("git-diff.patch", true),
    ]
    .iter()
    .map(|(n, e)| (n.to_string(), *e))
    .collect();
    assert_eq!(exists, want);

    // The analysis, with a model of its own.
    let (code, v) = s
        .post(
            &format!("/runs/{id}/postmortem"),
            Some(json!({"model": "sonnet-x"})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let steps = s.steps(&id).await;
    let pm = postmortem_steps(&steps);
    assert_eq!(pm.len(), 3, "{steps:?}");
    for (i, step) in pm.iter().enumerate() {
        assert_eq!(step["status"], "SUCCEEDED", "{step}");
        assert_eq!(step["attempt"], i + 1);
    }
    assert_eq!(v["steps"]["spec_compliance"], pm[0]["id"]);
    assert_eq!(v["steps"]["summary"], pm[2]["id"]);
    let ws = repo.path.canonicalize().expect("canonical");
    for (key, stem) in [
        ("spec_compliance", "spec-compliance"),
        ("run_quality", "run-quality"),
        ("summary", "summary"),
    ] {
        let path = analysis.join(format!("{stem}.md"));
        assert_eq!(v["reports"][key], path.display().to_string());
        let report = std::fs::read_to_string(&path).expect("report");
        assert!(
            report.starts_with(&format!("# Postmortem: {stem}\n")),
            "{report}"
        );
        assert!(
            report.contains(&format!("model=sonnet-x cwd={}", ws.display())),
            "the model asked for, in the workspace: {report}"
        );
    }
    let summary = std::fs::read_to_string(analysis.join("summary.md")).expect("summary");
    assert!(
        summary.contains("## Report: spec-compliance")
            && summary.contains("## Report: run-quality"),
        "the summary was shown both reports: {summary}"
    );
    // The steps' logs and prompts are artifacts.
    let names: Vec<String> = s
        .artifacts(&id)
        .await
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in [
        "iter-01-postmortem.log",
        "iter-03-postmortem.log",
        "iter-01-postmortem-prompt.txt",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    let log = s.artifact_text(&id, "iter-02-postmortem.log").await;
    assert!(log.starts_with("# Postmortem: run-quality"), "{log}");
    assert_eq!(s.run(&id).await["status"], "COMPLETED", "the status stays");

    // A run still going is refused; an unknown one is 404.
    let hang = s.repo("hang", 1, "hang", &[]);
    let rid = s.create(&hang, json!({})).await;
    s.wait_status(&rid, "RUNNING").await;
    let (code, v) = s.post(&format!("/runs/{rid}/postmortem"), None).await;
    assert_eq!(
        (code, v["code"].clone()),
        (409, json!("invalid_transition")),
        "{v}"
    );
    let (code, _) = s.post("/runs/nope/postmortem", None).await;
    assert_eq!(code, 404);
    s.verb(&rid, "cancel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_postmortem_of_a_run_waits_for_the_first_to_answer() {
    let s = Single::start("postmortem-twice", &[]).await;
    let repo = s.repo("ws", 1, "slow", &["reviewer=false"]);
    // `slow` takes its seconds before the agent's argument: put them into the command.
    let config = std::fs::read_to_string(repo.path.join(".loop/config")).expect("config");
    std::fs::write(
        repo.path.join(".loop/config"),
        config.replace(" slow", " slow 1"),
    )
    .expect("config");
    repo.git(&["commit", "-q", "-am", "slow 1"]);
    let id = s.create(&repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let url = s.url(&format!("/runs/{id}/postmortem"));
    let first = tokio::spawn(async move {
        let r = reqwest::Client::new().post(url).send().await.expect("POST");
        (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
    });
    crate::support::wait_for(
        "the first postmortem's step",
        std::time::Duration::from_secs(30),
        || async {
            let steps = s.steps(&id).await;
            (!postmortem_steps(&steps).is_empty()).then_some(())
        },
    )
    .await;
    let (code, v) = s.post(&format!("/runs/{id}/postmortem"), None).await;
    assert_eq!(
        (code, v["code"].clone()),
        (409, json!("postmortem_running")),
        "{v}"
    );
    let (code, v) = first.await.expect("first");
    assert_eq!((code, v["status"].clone()), (200, json!("ok")), "{v}");
    assert_eq!(postmortem_steps(&s.steps(&id).await).len(), 3);
    let (code, v) = s.post(&format!("/runs/{id}/postmortem"), None).await;
    assert_eq!(
        (code, v["status"].clone()),
        (200, json!("ok")),
        "again: {v}"
    );
}
