//! The review workflow on real repositories: the diff of a completed run (and its snapshot),
//! merge with both strategies, a merge conflict (409, nothing half-merged), scrap (worktree and
//! branch gone), and create-pr through a stand-in `gh` on the daemon's PATH that records its
//! arguments (and 503 without one).

use crate::helpers::Single;
use crate::support::repo::Repo;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

impl Single {
    /// `POST path` with a JSON body, or with no body at all; (status, JSON body or null).
    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.post(self.url(path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A completed run of `tasks` ticked tasks in `repo`; the run.
    pub async fn completed(&self, repo: &Repo) -> Value {
        let id = self.create(repo, json!({})).await;
        self.wait_status(&id, "COMPLETED").await
    }
}

fn id_of(run: &Value) -> String {
    run["id"].as_str().expect("id").to_string()
}

fn worktree_path(run: &Value) -> PathBuf {
    PathBuf::from(
        run["worktree"]["worktree_path"]
            .as_str()
            .expect("worktree path"),
    )
}

fn branch_of(run: &Value) -> String {
    run["worktree"]["run_branch"]
        .as_str()
        .expect("run branch")
        .to_string()
}

fn branch_exists(repo: &Repo, branch: &str) -> bool {
    !repo.git(&["branch", "--list", branch]).trim().is_empty()
}

fn paths(files: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = files
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                f["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diff_of_a_completed_run_shows_its_commits_and_files_and_is_kept() {
    let s = Single::start("review-diff", &[]).await;
    let repo = s.repo("ws", 2, "tick", &[]);
    let run = s.completed(&repo).await;
    let id = id_of(&run);
    let branch = branch_of(&run);

    let d = s.get_json(&format!("/runs/{id}/diff")).await;
    assert_eq!(d["base_ref"], "main");
    assert_eq!(d["head_ref"], branch.as_str());
    let subjects: Vec<&str> = d["commits"]
        .as_array()
        .expect("commits")
        .iter()
        .map(|c| c["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(subjects, ["task 1: task number 1", "task 2: task number 2"]);
    let first = &d["commits"][0];
    assert_eq!(first["author"], "fake-agent");
    assert_eq!(
        first["sha"].as_str().map(str::len),
        Some(40),
        "a full sha: {first}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(first["timestamp"].as_str().unwrap_or_default())
            .is_ok(),
        "{first}"
    );
    assert_eq!(
        paths(&first["files"]),
        [
            ("PLAN.md".to_string(), "modified".to_string()),
            ("task-1.txt".to_string(), "added".to_string())
        ]
    );
    assert_eq!(
        paths(&d["files"]),
        [
            ("PLAN.md".to_string(), "modified".to_string()),
            ("task-1.txt".to_string(), "added".to_string()),
            ("task-2.txt".to_string(), "added".to_string())
        ]
    );
    let plan = d["files"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["path"] == "PLAN.md"))
        .expect("PLAN.md");
    let patch = plan["patch"].as_str().expect("patch");
    assert!(
        patch.contains("-- [ ] task number 1") && patch.contains("+- [x] task number 1"),
        "{patch}"
    );
    assert_eq!(plan["additions"], 2);
    assert_eq!(plan["deletions"], 2);
    assert_eq!(
        d["stats"],
        json!({"additions": 4, "deletions": 2, "files_changed": 3})
    );

    // The snapshot was written at completion: the diff survives scrapping the branch.
    let arts = s.artifacts(&id).await;
    assert!(
        arts.iter()
            .any(|a| a["name"] == "review-diff.json" && a["kind"] == "review_diff"),
        "{arts:?}"
    );
    assert_eq!(s.post(&format!("/runs/{id}/scrap"), None).await.0, 204);
    assert!(!branch_exists(&repo, &branch));
    assert_eq!(s.get_json(&format!("/runs/{id}/diff")).await, d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_squashes_by_default_and_merges_on_request_then_removes_the_worktree() {
    let s = Single::start("review-merge", &[]).await;
    // Squash, with no body at all (as the existing dashboard sends it).
    let repo = s.repo("ws", 2, "tick", &[]);
    let run = s.completed(&repo).await;
    let (id, branch) = (id_of(&run), branch_of(&run));
    assert!(worktree_path(&run).exists(), "kept for review");
    let before = repo.git(&["rev-parse", "main"]).trim().to_string();
    let (status, body) = s.post(&format!("/runs/{id}/merge"), None).await;
    assert_eq!(status, 200, "{body}");
    let sha = body["commit"].as_str().expect("commit").to_string();
    assert_eq!(repo.git(&["rev-parse", "main"]).trim(), sha);
    assert_eq!(
        repo.git(&["log", "-1", "--format=%s", "main"]).trim(),
        format!("Squash merge from {branch}")
    );
    assert_eq!(
        repo.git(&["rev-parse", &format!("{sha}^")]).trim(),
        before,
        "one commit on top of main"
    );
    // The primary checkout is on main, clean and shows the merged files.
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), "main");
    assert!(repo.path.join("task-2.txt").exists());
    assert!(repo.git(&["status", "--porcelain"]).trim().is_empty());
    assert!(!worktree_path(&run).exists(), "merge removes the worktree");
    assert!(branch_exists(&repo, &branch), "merge keeps the branch");
    let after = s.run(&id).await;
    assert_eq!(after["review_status"], "merged");
    assert_eq!(after["merge_commit"], sha.as_str());
    assert!(after["review_action_at"].is_string());
    assert_eq!(after["status"], "COMPLETED");
    assert_eq!(after["worktree_cleanup_status"], "cleaned");

    // Merge: the run branch's own commits land on the target.
    let repo2 = s.repo("ws2", 1, "tick", &[]);
    let run2 = s.completed(&repo2).await;
    let (id2, branch2) = (id_of(&run2), branch_of(&run2));
    let head2 = repo2.git(&["rev-parse", &branch2]).trim().to_string();
    let (status, body) = s
        .post(
            &format!("/runs/{id2}/merge"),
            Some(json!({"strategy": "merge"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["commit"], head2.as_str(), "a fast-forward");
    assert_eq!(repo2.git(&["rev-parse", "main"]).trim(), head2);
    assert_eq!(s.run(&id2).await["review_status"], "merged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_conflict_is_409_and_changes_nothing() {
    let s = Single::start("review-conflict", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let run = s.completed(&repo).await;
    let id = id_of(&run);
    // main changes the line the run ticked.
    let plan = std::fs::read_to_string(repo.path.join("PLAN.md")).expect("plan");
    std::fs::write(
        repo.path.join("PLAN.md"),
        plan.replace("task number 1", "task number one"),
    )
    .expect("write plan");
    repo.git(&["commit", "-q", "-am", "main edits the plan"]);
    let main_before = repo.git(&["rev-parse", "main"]);
    for body in [None, Some(json!({"strategy": "merge"}))] {
        let (status, err) = s.post(&format!("/runs/{id}/merge"), body).await;
        assert_eq!(status, 409, "{err}");
        assert_eq!(err["code"], "merge_conflict");
        assert!(
            err["error"]
                .as_str()
                .unwrap_or_default()
                .contains("PLAN.md"),
            "{err}"
        );
    }
    assert_eq!(repo.git(&["rev-parse", "main"]), main_before);
    assert!(repo.git(&["status", "--porcelain"]).trim().is_empty());
    assert!(worktree_path(&run).exists(), "the worktree is kept");
    let after = s.run(&id).await;
    assert_eq!(after["review_status"], "pending");
    assert!(after["merge_commit"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrap_removes_the_worktree_and_the_branch_and_may_be_repeated() {
    let s = Single::start("review-scrap", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let run = s.completed(&repo).await;
    let (id, branch) = (id_of(&run), branch_of(&run));
    // A merge first: scrap clears its commit.
    assert_eq!(s.post(&format!("/runs/{id}/merge"), None).await.0, 200);
    assert_eq!(s.post(&format!("/runs/{id}/scrap"), None).await.0, 204);
    assert!(!worktree_path(&run).exists());
    assert!(!branch_exists(&repo, &branch));
    assert!(!repo
        .git(&["worktree", "list", "--porcelain"])
        .contains(&branch));
    let after = s.run(&id).await;
    assert_eq!(after["review_status"], "scrapped");
    assert!(after["merge_commit"].is_null() && after["pr_url"].is_null());
    assert_eq!(s.post(&format!("/runs/{id}/scrap"), None).await.0, 204);

    // Only an ended run: a running one is refused and keeps its worktree.
    let busy = s.repo("busy", 1, "hang", &[]);
    let rid = s.create(&busy, json!({})).await;
    s.wait_step_in_progress(&rid).await;
    let (status, err) = s.post(&format!("/runs/{rid}/scrap"), None).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    let running = s.run(&rid).await;
    assert!(worktree_path(&running).exists());
    s.verb(&rid, "cancel").await;
}

/// A directory holding a stand-in `gh` that records its arguments (one per line) in
/// `gh-args.txt` beside it and prints a pull-request URL.
fn stand_in_gh(dir: &Path) -> PathBuf {
    let bin = dir.join("gh-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = bin.join("gh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\npwd >> '{}'\necho 'https://github.example/o/r/pull/7'\n",
            bin.join("gh-args.txt").display(),
            bin.join("gh-args.txt").display()
        ),
    )
    .expect("gh script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// PATH without any directory holding a `gh`.
fn path_without_gh() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| !d.join("gh").exists())
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pr_runs_gh_with_the_run_branch_and_records_the_url() {
    let dir = crate::support::test_dir("review-gh-bin");
    let bin = stand_in_gh(dir.path());
    let path = format!("{}:{}", bin.display(), path_without_gh());
    let s = Single::start("review-pr", &[("PATH", &path)]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let run = s.completed(&repo).await;
    let (id, branch) = (id_of(&run), branch_of(&run));
    let (status, body) = s.post(&format!("/runs/{id}/create-pr"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], "https://github.example/o/r/pull/7");
    let args = std::fs::read_to_string(bin.join("gh-args.txt")).expect("gh ran");
    let name = run["name"].as_str().expect("name");
    let want = format!(
        "pr\ncreate\n--head\n{branch}\n--base\nmain\n--title\n{name}\n--body\nCreated by loopd run {id}\n{}\n",
        repo.path.canonicalize().expect("canonical").display()
    );
    assert_eq!(args, want, "gh's arguments, then its working directory");
    let after = s.run(&id).await;
    assert_eq!(after["review_status"], "pr_created");
    assert_eq!(after["pr_url"], "https://github.example/o/r/pull/7");
    assert!(worktree_path(&run).exists(), "a PR keeps the worktree");

    // Title and body as given.
    let (status, _) = s
        .post(
            &format!("/runs/{id}/create-pr"),
            Some(json!({"title": "Add tasks", "body": "Please review"})),
        )
        .await;
    assert_eq!(status, 200);
    let args = std::fs::read_to_string(bin.join("gh-args.txt")).expect("gh ran");
    assert!(
        args.contains("--title\nAdd tasks\n--body\nPlease review\n"),
        "{args}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pr_without_gh_is_503_and_records_nothing() {
    let s = Single::start("review-no-gh", &[("PATH", &path_without_gh())]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let run = s.completed(&repo).await;
    let id = id_of(&run);
    let (status, err) = s.post(&format!("/runs/{id}/create-pr"), None).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["code"], "gh_unavailable");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or_default()
            .contains("gh CLI not available"),
        "{err}"
    );
    let after = s.run(&id).await;
    assert_eq!(after["review_status"], "pending");
    assert!(after["pr_url"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_removes_worktree_and_branch_keeps_the_status_and_cancels_a_running_run() {
    let s = Single::start("review-reset", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let run = s.completed(&repo).await;
    let (id, branch) = (id_of(&run), branch_of(&run));
    let diff = s.get_json(&format!("/runs/{id}/diff")).await;
    for _ in 0..2 {
        assert_eq!(s.post(&format!("/runs/{id}/reset"), None).await.0, 204);
    }
    assert!(!worktree_path(&run).exists());
    assert!(!branch_exists(&repo, &branch));
    let after = s.run(&id).await;
    assert_eq!(after["status"], "COMPLETED");
    assert_eq!(after["review_status"], "pending");
    assert_eq!(after["worktree_cleanup_status"], "reset");
    assert!(after["worktree_cleaned_at"].is_null());
    assert_eq!(
        s.get_json(&format!("/runs/{id}/diff")).await,
        diff,
        "the snapshot outlives the branch"
    );
    let none = "00000000-0000-7000-8000-000000000000";
    assert_eq!(s.post(&format!("/runs/{none}/reset"), None).await.0, 404);

    let busy = s.repo("busy", 1, "hang", &[]);
    let rid = s.create(&busy, json!({})).await;
    s.wait_step_in_progress(&rid).await;
    let running = s.run(&rid).await;
    assert_eq!(s.post(&format!("/runs/{rid}/reset"), None).await.0, 204);
    assert_eq!(s.run(&rid).await["status"], "CANCELED");
    assert!(!worktree_path(&running).exists());
    assert!(!branch_exists(&busy, &branch_of(&running)));
}
