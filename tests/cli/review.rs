//! The review verbs on real runs in a real repository: `diff` (tables, patches, JSON), `merge`
//! (the target branch moves to the commit printed), `worktrees` (each kept worktree with its
//! run and why it is kept), `scrap`, `pr` (through a stand-in `gh` on the daemon's PATH),
//! `reset` and `worktree-rm`; refusals are the daemon's message on one error line.

use crate::support::repo::Repo;
use crate::{header, Env};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The run's worktree path and branch, from the API.
async fn worktree_of(env: &Env, id: &str) -> (PathBuf, String) {
    let v: Value = reqwest::get(format!("{}/runs/{id}", env.daemon.url()))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let wt = &v["run"]["worktree"];
    (
        PathBuf::from(wt["worktree_path"].as_str().expect("worktree path")),
        wt["run_branch"].as_str().expect("run branch").to_string(),
    )
}

fn branch_exists(repo: &Repo, branch: &str) -> bool {
    !repo.git(&["branch", "--list", branch]).trim().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_worktrees_and_merge_show_and_merge_a_completed_run() {
    let env = Env::start("cli-review-merge", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 2, "tick", &[]);
    let id = env.submit(&repo).await;
    env.wait_status(&id, "COMPLETED").await;
    let (worktree, branch) = worktree_of(&env, &id).await;

    let text = env
        .client(&repo.path, &["diff", &id])
        .await
        .ok()
        .to_string();
    let first = text.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!("main..{branch}: 3 file(s) changed, +4 -2"),
        "{text}"
    );
    let commits = text
        .lines()
        .skip_while(|l| !l.starts_with("COMMIT"))
        .collect::<Vec<_>>();
    assert_eq!(
        header(commits[0]),
        ["COMMIT", "DATE", "AUTHOR", "LINES", "MESSAGE"]
    );
    assert!(
        commits[1].contains("fake-agent") && commits[1].ends_with("task 1: task number 1"),
        "{text}"
    );
    assert!(commits[2].ends_with("task 2: task number 2"), "{text}");
    let files: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("STATUS"))
        .skip(1)
        .collect();
    assert_eq!(files.len(), 3, "{text}");
    assert!(
        files
            .iter()
            .any(|l| l.starts_with("added") && l.ends_with("task-2.txt")),
        "{text}"
    );
    assert!(!text.contains("@@"), "no patches without --patch: {text}");
    let patched = env
        .client(&repo.path, &["diff", "--patch", &id])
        .await
        .ok()
        .to_string();
    assert!(patched.contains("@@") && patched.contains("+- [x] task number 1"));
    let v = env
        .client(&repo.path, &["diff", "--json", &id])
        .await
        .json();
    assert_eq!(v["base_ref"], "main");
    assert_eq!(v["head_ref"], branch.as_str());
    assert_eq!(v["commits"].as_array().map(Vec::len), Some(2));

    // The completed run's worktree is kept for review.
    let text = env
        .client(&repo.path, &["worktrees"])
        .await
        .ok()
        .to_string();
    assert_eq!(
        header(&text),
        ["PATH", "BRANCH", "RUN", "STATUS", "KEPT", "REMOVE", "AFTER"]
    );
    let row = text.lines().nth(1).unwrap_or_default();
    let want_path = worktree.display().to_string();
    assert!(
        row.starts_with(&want_path)
            && row.contains(&branch)
            && row.contains(&id)
            && row.contains("COMPLETED")
            && row.contains("awaiting review"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 2, "one worktree: {text}");
    // From a subdirectory, and naming the workspace, the same list.
    let v = env
        .client(&repo.path.join("specs"), &["worktrees", "--json"])
        .await
        .json();
    assert_eq!(v["worktrees"][0]["run_id"], id.as_str());
    assert_eq!(v["worktrees"][0]["cleanup_status"], "deferred");
    assert!(v["worktrees"][0]["remove_after"].is_string(), "{v}");
    let ws = repo.path.display().to_string();
    let other = env
        .client(env.dir.path(), &["worktrees", "--json", "--workspace", &ws])
        .await
        .json();
    assert_eq!(other["worktrees"], v["worktrees"]);

    // Merge: main moves to the commit printed, the worktree goes.
    let out = env
        .client(&repo.path, &["merge", &id, "--strategy", "merge"])
        .await;
    let line = out.ok().trim().to_string();
    let sha = line
        .strip_prefix(&format!("Run {id} merged: "))
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(repo.git(&["rev-parse", "main"]).trim(), sha);
    assert_eq!(
        repo.subjects("main"),
        ["initial", "task 1: task number 1", "task 2: task number 2"],
        "merged (fast-forward)"
    );
    assert!(!worktree.exists(), "merge removed the worktree");
    let text = env
        .client(&repo.path, &["worktrees"])
        .await
        .ok()
        .to_string();
    assert!(text.starts_with("No worktrees in "), "{text}");

    // Refusals: the daemon's words, one line, exit 1.
    let line = env.client(&repo.path, &["diff", "nope"]).await.error_line();
    assert_eq!(line, "error: run not found");
    let line = env
        .client(&repo.path, &["worktrees", "/no/such/dir"])
        .await
        .error_line();
    assert_eq!(line, "error: workspace not found: /no/such/dir");
}

/// A directory holding a stand-in `gh` that records its arguments (one per line) in
/// `gh-args.txt` beside it and prints a pull-request URL.
fn stand_in_gh(dir: &Path) -> PathBuf {
    let bin = dir.join("gh-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = bin.join("gh");
    let args = bin.join("gh-args.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\necho 'https://github.example/o/r/pull/7'\n",
            args.display()
        ),
    )
    .expect("gh script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrap_pr_reset_and_worktree_rm_act_and_refusals_are_one_line() {
    let bin_dir = crate::support::test_dir("cli-review-gh");
    let bin = stand_in_gh(bin_dir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = Env::start("cli-review-scrap", &[("PATH", &path)]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);

    // Scrap: worktree and branch gone.
    let a = env.submit(&repo).await;
    env.wait_status(&a, "COMPLETED").await;
    let (wt_a, branch_a) = worktree_of(&env, &a).await;
    let v = env
        .client(&repo.path, &["scrap", "--json", &a])
        .await
        .json();
    assert_eq!(
        v,
        serde_json::json!({"id": a, "action": "scrap", "ok": true})
    );
    assert!(!wt_a.exists() && !branch_exists(&repo, &branch_a));

    // A pull request through gh, then reset.
    let b = env.submit(&repo).await;
    env.wait_status(&b, "COMPLETED").await;
    let (wt_b, branch_b) = worktree_of(&env, &b).await;
    let out = env
        .client(&repo.path, &["pr", &b, "--title", "My title"])
        .await;
    assert_eq!(
        out.ok().trim(),
        "Pull request created: https://github.example/o/r/pull/7"
    );
    let args = std::fs::read_to_string(bin.join("gh-args.txt")).expect("gh ran");
    let want = format!(
        "pr\ncreate\n--head\n{branch_b}\n--base\nmain\n--title\nMy title\n--body\nCreated by loopd run {b}\n"
    );
    assert_eq!(args, want);
    let v = env.client(&repo.path, &["pr", "--json", &b]).await.json();
    assert_eq!(v["url"], "https://github.example/o/r/pull/7");
    let out = env.client(&repo.path, &["reset", &b]).await;
    assert_eq!(
        out.ok().trim(),
        format!("Run {b} reset (worktree and branch removed)")
    );
    assert!(!wt_b.exists() && !branch_exists(&repo, &branch_b));
    assert_eq!(env.status(&b).await, "COMPLETED", "reset keeps the status");

    // worktree-rm on a running run's worktree: cancelled, then removed.
    std::fs::write(
        repo.path.join(".loop/config"),
        format!("agent_cmd=sh {} hang\n", crate::support::fake_agent()),
    )
    .expect("config");
    repo.git(&["commit", "-q", "-am", "hang"]);
    let c = env.submit(&repo).await;
    env.wait_status(&c, "RUNNING").await;
    let (wt_c, branch_c) = worktree_of(&env, &c).await;
    let canonical = wt_c.canonicalize().expect("the worktree exists");
    let line = env.client(&repo.path, &["merge", &c]).await.error_line();
    assert_eq!(
        line,
        "error: not allowed: run must be completed to merge (status: RUNNING)"
    );
    let out = env
        .client(
            &repo.path.join("specs"),
            &["worktree-rm", "-f", &wt_c.display().to_string()],
        )
        .await;
    assert_eq!(
        out.ok().trim(),
        format!("Worktree {} removed", canonical.display())
    );
    assert!(!wt_c.exists());
    assert!(
        branch_exists(&repo, &branch_c),
        "worktree-rm keeps the branch"
    );
    assert_eq!(env.status(&c).await, "CANCELED");
    let line = env
        .client(
            &repo.path,
            &["worktree-rm", &repo.path.display().to_string()],
        )
        .await
        .error_line();
    assert!(
        line.starts_with("error: HTTP error: 400 - ") && line.contains("worktree"),
        "{line}"
    );
    let line = env.client(&repo.path, &["scrap", &c]).await.error_line();
    assert_eq!(
        line,
        "error: not allowed: run must be completed or failed to scrap (status: CANCELED)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_runs_the_postmortem_and_prints_where_the_reports_are() {
    let env = Env::start("cli-analyze", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);
    let id = env.submit(&repo).await;
    env.wait_status(&id, "COMPLETED").await;
    let analysis = repo
        .path
        .canonicalize()
        .expect("canonical")
        .join(format!("logs/loop/run-{id}/analysis"));
    let v = env
        .client(&repo.path, &["analyze", "--json", "--prompt-only", &id])
        .await
        .json();
    assert_eq!(v["status"], "prompt_only");
    assert!(!analysis.join("summary.md").exists());

    let text = env
        .client(&repo.path, &["analyze", &id])
        .await
        .ok()
        .to_string();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("Postmortem of run {id}: ok").as_str())
    );
    assert_eq!(
        lines.next(),
        Some(format!("analysis: {}", analysis.display()).as_str())
    );
    let rows: Vec<&str> = lines.skip_while(|l| !l.starts_with("REPORT")).collect();
    assert_eq!(header(rows[0]), ["REPORT", "FILE"]);
    for (row, stem) in rows[1..]
        .iter()
        .zip(["spec-compliance", "run-quality", "summary"])
    {
        let file = analysis.join(format!("{stem}.md"));
        assert_eq!(header(row), [stem.to_string(), file.display().to_string()]);
        assert!(file.is_file(), "{file:?}");
    }
    // `inspect` shows the postmortem's steps (the old loopctl's listing leaves them out).
    let v = env
        .client(&repo.path, &["inspect", "--json", &id])
        .await
        .json();
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let postmortem = steps.iter().filter(|s| s["phase"] == "postmortem").count();
    assert_eq!(postmortem, 3, "{v}");
    let text = env
        .client(&repo.path, &["inspect", &id])
        .await
        .ok()
        .to_string();
    assert!(text.contains("postmortem"), "{text}");
    let line = env
        .client(&repo.path, &["analyze", "nope"])
        .await
        .error_line();
    assert_eq!(line, "error: run not found");
}
