//! `loopd run --git` in a clone: a git run of the clone's origin at its current branch, which
//! completes and is pushed back to that origin; a branch that is not pushed, or has unpushed
//! commits, is refused with what to do; a name whose run branch another run not ended holds
//! is refused (409 `run_branch_in_use`), also for a retry; a name whose branch the remote has
//! already, or another run not ended works on, gets `-2`, `-3`, … appended.

use crate::support::repo::Repo;
use crate::Env;

/// An origin (bare) with one open task for the fake agent in `mode`, and a clone of it with
/// `main` tracking origin/main.
fn origin_and_clone(dir: &std::path::Path, mode: &str) -> (std::path::PathBuf, Repo) {
    let upstream = Repo::create(dir, "upstream", 1, mode, &[]);
    let origin = dir.join("origin.git");
    let (o, w) = (origin.display().to_string(), dir.join("work"));
    upstream.git(&["clone", "-q", "--bare", ".", &o]);
    upstream.git(&["clone", "-q", &o, &w.display().to_string()]);
    (origin, Repo { path: w })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_git_submits_the_clone_s_origin_at_its_branch_and_the_run_is_pushed_back() {
    let env = Env::start("cli-git", &[]).await;
    let (origin, work) = origin_and_clone(env.dir.path(), "tick");
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
    let (_origin, work) = origin_and_clone(env.dir.path(), "tick");
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

/// `POST path` with `body` (or none) on the daemon; the status and JSON answer (null if none).
async fn post(env: &Env, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let c = reqwest::Client::new();
    let mut r = c.post(format!("{}{path}", env.daemon.url()));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("POST");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_run_branch_a_run_not_ended_holds_is_refused_until_that_run_ends() {
    let env = Env::start("cli-git-same-name", &[]).await;
    // Runs that hang hold their branch for as long as the test needs.
    let (origin, work) = origin_and_clone(env.dir.path(), "hang");
    let url = origin.display().to_string();
    let submit = |name: &str, agent: Option<&str>| {
        let mut body = serde_json::json!({
            "spec_path": "specs/demo.md", "plan_path": "PLAN.md", "workspace_root": "demo",
            "workspace_source": "git", "repo_url": url, "name": name,
        });
        if let Some(cmd) = agent {
            body["config_override"] = serde_json::json!({ "agent_cmd": cmd });
        }
        body
    };
    // A run that failed holds nothing: another of its name is taken; its retry is refused.
    let fail = format!("sh {} fail", crate::support::fake_agent());
    let (status, failed) = post(&env, "/runs", Some(submit("flaky", Some(&fail)))).await;
    assert_eq!(status, 201, "{failed}");
    let failed = failed["run"]["id"].as_str().expect("id").to_string();
    env.wait_status(&failed, "FAILED").await;
    let (status, holder) = post(&env, "/runs", Some(submit("Flaky", None))).await;
    assert_eq!(status, 201, "{holder}");
    let holder = holder["run"]["id"].as_str().expect("id").to_string();
    let (status, v) = post(&env, &format!("/runs/{failed}/retry"), None).await;
    assert_eq!(
        (status, &v["code"]),
        (409, &serde_json::json!("run_branch_in_use")),
        "{v}"
    );
    assert_eq!(env.status(&failed).await, "FAILED");

    // The same branch (`Flaky` and `flaky` are both run/flaky) over the API and the CLI.
    let (status, v) = post(&env, "/runs", Some(submit("flaky", None))).await;
    assert_eq!(
        (status, &v["code"]),
        (409, &serde_json::json!("run_branch_in_use")),
        "{v}"
    );
    let message = v["error"].as_str().expect("error");
    assert!(
        message.starts_with(&format!(
            "run branch run/flaky of {url} is in use by run {holder}"
        )),
        "{message}"
    );
    let args = [
        "run",
        "--git",
        "--name",
        "flaky",
        "specs/demo.md",
        "PLAN.md",
    ];
    let line = env.client(&work.path, &args).await.error_line();
    assert_eq!(line, format!("error: {message}"));
    let other = [
        "run",
        "--json",
        "--git",
        "--name",
        "other",
        "specs/demo.md",
        "PLAN.md",
    ];
    let v = env.client(&work.path, &other).await.json();
    assert_eq!(v["run"]["name"], "other", "another name is taken");

    // Once the holder has ended, the name is free again.
    assert_eq!(
        post(&env, &format!("/runs/{holder}/cancel"), None).await.0,
        204
    );
    let v = env.client(&work.path, &args).await;
    assert!(v.ok().contains("flaky"), "{}", v.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_branch_the_remote_has_already_pushes_its_run_with_a_suffix() {
    let env = Env::start("cli-git-name-reused", &[]).await;
    let (origin, work) = origin_and_clone(env.dir.path(), "tick");
    let origin_repo = Repo { path: origin };
    let args = [
        "run",
        "--json",
        "--git",
        "--name",
        "feature-x",
        "specs/demo.md",
        "PLAN.md",
    ];
    let first = env.client(&work.path, &args).await.json();
    let first = first["run"]["id"].as_str().expect("id").to_string();
    env.wait_status(&first, "COMPLETED").await;
    let pushed = origin_repo.git(&["rev-parse", "run/feature-x"]);

    // The remote moves on, so the second run's commits cannot be the first one's.
    std::fs::write(work.path.join("notes.txt"), "between the runs\n").expect("write");
    work.git(&["add", "notes.txt"]);
    work.git(&["commit", "-q", "-m", "between the runs"]);
    work.git(&["push", "-q", "origin", "HEAD"]);
    let v = env.client(&work.path, &args).await.json();
    assert_eq!(v["run"]["name"], "feature-x");
    let second = v["run"]["id"].as_str().expect("id").to_string();
    let what = format!("run {second} to end");
    let status = crate::support::wait_for(&what, std::time::Duration::from_secs(30), || async {
        let s = env.status(&second).await;
        matches!(s.as_str(), "COMPLETED" | "FAILED").then_some(s)
    })
    .await;
    let run: serde_json::Value = reqwest::get(format!("{}/runs/{second}", env.daemon.url()))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status, "COMPLETED", "{run}");
    assert_eq!(run["run"]["pushed_branch"], "run/feature-x-2");
    assert_eq!(
        run["run"]["run_branch"], "run/feature-x-2",
        "named from the start"
    );
    assert_eq!(
        origin_repo.subjects("run/feature-x-2"),
        ["initial", "between the runs", "task 1: task number 1"],
        "the second run's work is on its own branch"
    );
    assert_eq!(
        origin_repo.git(&["rev-parse", "run/feature-x"]),
        pushed,
        "the first run's branch is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suffix_skips_the_remote_s_branches_and_those_of_runs_not_ended() {
    let env = Env::start("cli-git-suffix", &[]).await;
    let (origin, work) = origin_and_clone(env.dir.path(), "hang");
    // The remote has run/feature-x for a reason of its own.
    work.git(&["push", "-q", "origin", "HEAD:refs/heads/run/feature-x"]);
    let url = origin.display().to_string();
    let submit = |name: &str| {
        serde_json::json!({
            "spec_path": "specs/demo.md", "plan_path": "PLAN.md", "workspace_root": "demo",
            "workspace_source": "git", "repo_url": url, "name": name,
        })
    };
    // A run given the name feature-x-2 holds run/feature-x-2 while it hangs.
    let (status, v) = post(&env, "/runs", Some(submit("feature-x-2"))).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["run"]["run_branch"], "run/feature-x-2");
    let (status, v) = post(&env, "/runs", Some(submit("feature-x"))).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["run"]["run_branch"], "run/feature-x-3", "{v}");
    let id = v["run"]["id"].as_str().expect("id");
    let shown: serde_json::Value = reqwest::get(format!("{}/runs/{id}", env.daemon.url()))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(shown["run"]["run_branch"], "run/feature-x-3", "kept");
}
