//! `loopd run --git` in a clone: a git run of the clone's origin at its current branch, which
//! completes and is pushed back to that origin; a branch that is not pushed, or has unpushed
//! commits, is refused with what to do.

use crate::support::repo::Repo;
use crate::Env;

/// An origin (bare) with one open task, and a clone of it with `main` tracking origin/main.
fn origin_and_clone(dir: &std::path::Path) -> (std::path::PathBuf, Repo) {
    let upstream = Repo::create(dir, "upstream", 1, "tick", &[]);
    let origin = dir.join("origin.git");
    let (o, w) = (origin.display().to_string(), dir.join("work"));
    upstream.git(&["clone", "-q", "--bare", ".", &o]);
    upstream.git(&["clone", "-q", &o, &w.display().to_string()]);
    (origin, Repo { path: w })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_git_submits_the_clone_s_origin_at_its_branch_and_the_run_is_pushed_back() {
    let env = Env::start("cli-git", &[]).await;
    let (origin, work) = origin_and_clone(env.dir.path());
    let specs = work.path.join("specs");
    let v = env
        .client(&specs, &["run", "--json", "--git", "demo.md", "../PLAN.md"])
        .await
        .json();
    let run = &v["run"];
    assert_eq!(run["repo_url"], origin.display().to_string());
    assert_eq!(run["workspace_source"], "git");
    assert_eq!(
        run["spec_path"], "specs/demo.md",
        "relative to the repository"
    );
    assert_eq!(run["plan_path"], "PLAN.md");
    let head = work.git(&["rev-parse", "HEAD"]);
    assert_eq!(run["repo_ref"], head.trim(), "the branch's commit");
    let id = run["id"].as_str().expect("id");
    env.wait_status(id, "COMPLETED").await;
    let origin_repo = Repo { path: origin };
    let branches = origin_repo.git(&["branch", "--list", "run/*"]);
    let branch = branches.trim().trim_start_matches("* ").to_string();
    assert_eq!(
        origin_repo.subjects(&branch),
        ["initial", "task 1: task number 1"],
        "the run branch was pushed to origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_git_refuses_a_branch_that_is_not_pushed_or_has_unpushed_commits() {
    let env = Env::start("cli-git-unpushed", &[]).await;
    let (_origin, work) = origin_and_clone(env.dir.path());
    std::fs::write(work.path.join("notes.txt"), "local\n").expect("write");
    work.git(&["add", "notes.txt"]);
    work.git(&["commit", "-q", "-m", "local only"]);
    let out = env
        .client(&work.path, &["run", "--git", "specs/demo.md", "PLAN.md"])
        .await;
    assert_eq!(
        out.error_line(),
        "error: --git: branch main has 1 unpushed commit(s): git push origin main"
    );
    work.git(&["checkout", "-q", "-b", "feature"]);
    let out = env
        .client(&work.path, &["run", "--git", "specs/demo.md", "PLAN.md"])
        .await;
    assert_eq!(
        out.error_line(),
        "error: --git: branch feature is not pushed to origin: git push -u origin feature"
    );
    let listed = env.client(&work.path, &["list", "--json"]).await.json();
    assert_eq!(
        listed["runs"],
        serde_json::json!([]),
        "nothing was submitted"
    );
}
