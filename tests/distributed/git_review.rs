//! The review workflow of git runs on a controller and a worker (docs/review.md "Git runs"):
//! the diff read from the run's newest checkpoint through the controller's mirror (live while
//! the run goes on, then the snapshot taken at completion), merges of both strategies pushed
//! to the run's `file://` remote, a push the remote refuses and a merge conflict that change
//! nothing, scrap deleting the pushed branch, create-pr pushing the branch before running
//! a stand-in `gh`, and two runs of one spec started at once pushing branches of their own.

use crate::cluster::{git, path_str, Cluster, Extra, Timings};
use crate::support::repo::{subjects_at, Repo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A repository with `tasks` open tasks running the fake agent in `mode`, served as a bare
/// `file://` remote beside it: (the bare repository, its URL).
fn served(c: &Cluster, name: &str, tasks: usize, mode: &str) -> (PathBuf, String) {
    let repo = Repo::create(c.dir.path(), name, tasks, mode, &[]);
    let bare = c.dir.path().join(format!("served/{name}.git"));
    crate::support::repo::bare_copy(&repo.path, &bare);
    let url = format!("file://{}", bare.display());
    (bare, url)
}

fn git_run(url: &str) -> Value {
    json!({
        "spec_path": "specs/demo.md",
        "plan_path": "PLAN.md",
        "workspace_root": "demo",
        "workspace_source": "git",
        "repo_url": url,
    })
}

/// The commit `reference` names in `repo`, if it exists.
fn rev(repo: &Path, reference: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "-q", "--verify"])
        .arg(format!("{reference}^{{commit}}"))
        .current_dir(repo)
        .output()
        .expect("git rev-parse");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commits `file` = `text` on `main` of the bare remote (someone else's push); the new sha.
fn push_to_main(c: &Cluster, bare: &Path, file: &str, text: &str, message: &str) -> String {
    let work = c.dir.path().join(format!("work-{}", uuid_like(message)));
    git(
        c.dir.path(),
        &["clone", "-q", &path_str(bare), &path_str(&work)],
    );
    std::fs::write(work.join(file), text).expect("write");
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=someone",
            "-c",
            "user.email=someone@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
    git(&work, &["push", "-q", "origin", "main"]);
    rev(bare, "main").expect("main")
}

fn uuid_like(s: &str) -> String {
    s.chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect()
}

impl Cluster {
    /// `POST path` with no body at all (what the dashboard sends); (status, JSON or null).
    async fn post_empty(&self, path: &str) -> (u16, Value) {
        let resp = self.http.post(self.url(path)).send().await.expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post_value(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self.post(path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn subjects(diff: &Value) -> Vec<String> {
    diff["commits"]
        .as_array()
        .expect("commits")
        .iter()
        .map(|c| c["message"].as_str().expect("message").to_string())
        .collect()
}

fn paths(diff: &Value) -> Vec<String> {
    let mut p: Vec<String> = diff["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_run_s_diff_comes_from_its_checkpoints_and_a_squash_merge_lands_on_the_remote() {
    let c = Cluster::start("git-review-squash", 1, Timings::default()).await;
    let (bare, url) = served(&c, "app", 2, "slow 1");
    let initial = rev(&bare, "main").expect("main");
    let id = c.submit(git_run(&url)).await;

    // While the second task runs, the diff is the first task's checkpoint, read live.
    c.wait_step(&id, "the second implementation step to run", |s| {
        s["phase"] == "implementation" && s["attempt"] == 2 && s["status"] == "IN_PROGRESS"
    })
    .await;
    let diff = c.get(&format!("/runs/{id}/diff")).await;
    assert_eq!(diff["base_ref"], "main", "{diff}");
    assert_eq!(subjects(&diff), ["task 1: task number 1"], "{diff}");
    assert_eq!(paths(&diff), ["PLAN.md", "task-1.txt"], "{diff}");

    let run = c.wait_status(&id, "COMPLETED").await;
    let branch = run["pushed_branch"].as_str().expect("pushed_branch");
    let head = run["pushed_commit"].as_str().expect("pushed_commit");
    let diff = c.get(&format!("/runs/{id}/diff")).await;
    assert_eq!(
        (diff["base_ref"].as_str(), diff["head_ref"].as_str()),
        (Some("main"), Some(branch))
    );
    assert_eq!(
        subjects(&diff),
        ["task 1: task number 1", "task 2: task number 2"]
    );
    assert_eq!(diff["commits"][1]["sha"], head);
    assert_eq!(paths(&diff), ["PLAN.md", "task-1.txt", "task-2.txt"]);
    assert_eq!(diff["stats"]["files_changed"], 3);
    assert_eq!(diff["stats"]["additions"], 4, "{diff}");
    let task2 = &diff["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "task-2.txt")
        .expect("task-2.txt")["patch"];
    assert!(task2.as_str().expect("patch").contains("+task number 2"));
    let artifacts = c.artifacts(&id).await;
    let snapshot = artifacts
        .iter()
        .find(|a| a["name"] == "review-diff.json")
        .expect("the diff snapshot written at completion");
    assert_eq!(snapshot["kind"], "review_diff");
    let stored: Value =
        serde_json::from_slice(&c.download(&id, "review-diff.json").await).expect("snapshot JSON");
    assert_eq!(stored["head_sha"], head);
    assert_eq!(stored["base_sha"], initial);

    // Merge with no body: the default strategy, squash.
    let (status, body) = c.post_empty(&format!("/runs/{id}/merge")).await;
    assert_eq!(status, 200, "{body}");
    let commit = body["commit"].as_str().expect("commit");
    assert_eq!(rev(&bare, "main").as_deref(), Some(commit), "pushed");
    assert_eq!(
        subjects_at(&bare, "main"),
        ["initial", &format!("Squash merge from {branch}")]
    );
    assert_eq!(
        rev(&bare, &format!("{commit}^")).as_deref(),
        Some(initial.as_str()),
        "one commit on top of the old main"
    );
    assert_eq!(
        git(&bare, &["rev-parse", &format!("{commit}^{{tree}}")]),
        git(&bare, &["rev-parse", &format!("{head}^{{tree}}")]),
        "the run's files"
    );
    let after = c.run(&id).await;
    assert_eq!(after["review_status"], "merged");
    assert_eq!(after["merge_commit"], commit);
    assert_eq!(
        c.get(&format!("/runs/{id}/diff")).await,
        diff,
        "the snapshot answers after the merge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_push_or_change_nothing_and_scrap_deletes_the_pushed_branch() {
    let c = Cluster::start("git-review-merge", 1, Timings::default()).await;
    let (merged_bare, merged_url) = served(&c, "merged", 2, "tick");
    let (conflict_bare, conflict_url) = served(&c, "conflicted", 1, "tick");
    let merged = c.submit(git_run(&merged_url)).await;
    let conflicted = c.submit(git_run(&conflict_url)).await;
    let run = c.wait_status(&merged, "COMPLETED").await;
    let head = run["pushed_commit"].as_str().expect("pushed_commit");
    let branch = run["pushed_branch"].as_str().expect("pushed_branch");
    let other = c.wait_status(&conflicted, "COMPLETED").await;
    let other_branch = other["pushed_branch"].as_str().expect("pushed_branch");
    assert_eq!(
        rev(&conflict_bare, other_branch).as_deref(),
        other["pushed_commit"].as_str()
    );

    // Someone pushed to main meanwhile, and main is protected for now.
    let theirs = push_to_main(
        &c,
        &merged_bare,
        "other.txt",
        "theirs\n",
        "unrelated change",
    );
    let hook = merged_bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n").expect("hook");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("/runs/{merged}/merge");
    let (status, body) = c.post_value(&path, json!({"strategy": "merge"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("push_rejected")),
        "{body}"
    );
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("rejected (pre-receive hook declined)"),
        "{error}"
    );
    assert_eq!(rev(&merged_bare, "main").as_deref(), Some(theirs.as_str()));
    let pending = c.run(&merged).await;
    assert_eq!(pending["review_status"], "pending");
    assert!(pending["merge_commit"].is_null());

    std::fs::remove_file(&hook).expect("unprotect");
    let (status, body) = c.post_value(&path, json!({"strategy": "merge"})).await;
    assert_eq!(status, 200, "{body}");
    let commit = body["commit"].as_str().expect("commit");
    assert_eq!(rev(&merged_bare, "main").as_deref(), Some(commit));
    assert_eq!(
        git(&merged_bare, &["log", "-1", "--format=%P%n%s", commit]),
        format!("{theirs} {head}\nMerge branch '{branch}' into main\n"),
        "a merge commit of their main and the run"
    );
    assert_eq!(c.run(&merged).await["review_status"], "merged");

    // Someone built on the pushed run branch: scrapping the run leaves their work alone.
    let work = c.dir.path().join("work-on-run-branch");
    git(
        c.dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            branch,
            &path_str(&merged_bare),
            &path_str(&work),
        ],
    );
    std::fs::write(work.join("more.txt"), "more\n").expect("write");
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "-c",
            "user.name=x",
            "-c",
            "user.email=x@example.invalid",
            "commit",
            "-q",
            "-m",
            "more",
        ],
    );
    git(&work, &["push", "-q", "origin", branch]);
    let moved = rev(&merged_bare, branch).expect("run branch");
    let (status, body) = c.post_empty(&format!("/runs/{merged}/scrap")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        rev(&merged_bare, branch),
        Some(moved),
        "a moved branch stays"
    );

    // Their change to the line the run ticked conflicts: 409, and the remote is as it was.
    let plan = "# Plan\n\n## Tasks\n- [ ] task number 1 (reworded)\n";
    let main_before = push_to_main(&c, &conflict_bare, "PLAN.md", plan, "reword task 1");
    let (status, body) = c.post_empty(&format!("/runs/{conflicted}/merge")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("merge_conflict")),
        "{body}"
    );
    assert!(body["error"].as_str().expect("error").contains("PLAN.md"));
    assert_eq!(
        rev(&conflict_bare, "main").as_deref(),
        Some(main_before.as_str())
    );
    assert_eq!(c.run(&conflicted).await["review_status"], "pending");

    // Scrap deletes the branch the run pushed; again is fine.
    let (status, body) = c.post_empty(&format!("/runs/{conflicted}/scrap")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(rev(&conflict_bare, other_branch), None, "branch deleted");
    assert_eq!(
        rev(&conflict_bare, "main").as_deref(),
        Some(main_before.as_str())
    );
    let scrapped = c.run(&conflicted).await;
    assert_eq!(scrapped["review_status"], "scrapped");
    let (status, _) = c.post_empty(&format!("/runs/{conflicted}/scrap")).await;
    assert_eq!(status, 204, "scrap is repeatable");
}

/// A directory holding a stand-in `gh` that records its arguments (one per line) and its
/// working directory in `gh-args.txt` beside it and prints a pull-request URL.
pub(crate) fn stand_in_gh(dir: &Path) -> PathBuf {
    let bin = dir.join("gh-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = bin.join("gh");
    let args = bin.join("gh-args.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{0}'\npwd >> '{0}'\necho 'https://github.example/o/r/pull/9'\n",
            args.display()
        ),
    )
    .expect("gh script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_pr_pushes_the_run_branch_then_runs_gh() {
    let ghdir = crate::support::test_dir("git-review-gh");
    let bin = stand_in_gh(ghdir.path());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let extra = Extra {
        controller_env: vec![
            ("PATH".into(), path),
            ("LOOPD__GIT__PUSH_RUN_BRANCH".into(), "false".into()),
        ],
        ..Extra::default()
    };
    let c = Cluster::start_with("git-review-pr", 1, Timings::default(), &extra).await;
    let (bare, url) = served(&c, "app", 1, "tick");
    let id = c.submit(git_run(&url)).await;
    // A run started at a commit, not a branch, has no branch to merge into.
    let (_, pinned_url) = served(&c, "pinned", 1, "tick");
    let pinned_bare = c.dir.path().join("served/pinned.git");
    let sha = rev(&pinned_bare, "main").expect("main");
    let mut pinned = git_run(&pinned_url);
    pinned["repo_ref"] = json!(sha);
    let pinned = c.submit(pinned).await;
    let run = c.wait_status(&id, "COMPLETED").await;
    assert!(run["pushed_branch"].is_null(), "not pushed at completion");
    let branch = format!(
        "run/{}-{}",
        run["name"].as_str().expect("name"),
        &id[id.len() - 8..]
    );
    assert_eq!(rev(&bare, &branch), None);

    let (status, body) = c.post_empty(&format!("/runs/{id}/create-pr")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], "https://github.example/o/r/pull/9");
    assert_eq!(
        subjects_at(&bare, &branch),
        ["initial", "task 1: task number 1"],
        "the run branch was pushed first"
    );
    let args = std::fs::read_to_string(bin.join("gh-args.txt")).expect("gh ran");
    let name = run["name"].as_str().expect("name");
    let (args, cwd) = args.trim_end().rsplit_once('\n').expect("cwd line");
    assert_eq!(
        args,
        format!(
            "pr\ncreate\n--head\n{branch}\n--base\nmain\n--title\n{name}\n--body\nCreated by loopd run {id}"
        )
    );
    assert_eq!(
        git(Path::new(cwd), &["config", "remote.origin.url"]).trim(),
        url,
        "gh runs in the controller's mirror of the run's repository"
    );
    let after = c.run(&id).await;
    assert_eq!(after["review_status"], "pr_created");
    assert_eq!(after["pr_url"], "https://github.example/o/r/pull/9");
    assert_eq!(after["pushed_branch"], branch.as_str());
    assert_eq!(
        after["pushed_commit"].as_str(),
        rev(&bare, &branch).as_deref()
    );

    c.wait_status(&pinned, "COMPLETED").await;
    let diff = c.get(&format!("/runs/{pinned}/diff")).await;
    assert_eq!(diff["base_ref"], sha.as_str(), "the commit it started from");
    assert_eq!(subjects(&diff), ["task 1: task number 1"]);
    for verb in ["merge", "create-pr"] {
        let (status, body) = c.post_empty(&format!("/runs/{pinned}/{verb}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("no_target_branch")),
            "{verb}: {body}"
        );
    }
    assert_eq!(rev(&pinned_bare, "main").as_deref(), Some(sha.as_str()));
    assert_eq!(c.run(&pinned).await["review_status"], "pending");

    // It pushed nothing, so its scrap needs no remote: even a vanished one.
    std::fs::rename(&pinned_bare, pinned_bare.with_extension("gone")).expect("rename");
    let (status, body) = c.post_empty(&format!("/runs/{pinned}/scrap")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.run(&pinned).await["review_status"], "scrapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_spec_started_at_once_push_branches_of_their_own() {
    let c = Cluster::start("git-review-twins", 1, Timings::default()).await;
    let (bare, url) = served(&c, "twins", 1, "tick");
    let (a, b) = tokio::join!(c.submit(git_run(&url)), c.submit(git_run(&url)));
    let (ra, rb) = tokio::join!(
        c.wait_status(&a, "COMPLETED"),
        c.wait_status(&b, "COMPLETED")
    );
    assert_eq!(ra["name"], rb["name"], "both are named after the spec");
    let mut pushed = Vec::new();
    for (id, run) in [(&a, &ra), (&b, &rb)] {
        let branch = run["pushed_branch"].as_str().expect("pushed_branch");
        let name = run["name"].as_str().expect("name");
        assert_eq!(branch, format!("run/{name}-{}", &id[id.len() - 8..]));
        assert_eq!(
            rev(&bare, branch).as_deref(),
            run["pushed_commit"].as_str(),
            "{branch} is on the remote at the run's commit"
        );
        assert_eq!(
            subjects_at(&bare, branch),
            ["initial", "task 1: task number 1"]
        );
        pushed.push(branch.to_string());
    }
    assert_ne!(pushed[0], pushed[1]);
}
