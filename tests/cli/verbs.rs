//! The verbs doing their job: tables people can read, `--json` that parses, control verbs that
//! change the run, downloads that match their checksum.

use crate::support::repo::Repo;
use crate::{header, Env};
use serde_json::json;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_list_and_inspect_print_tables_and_json() {
    let env = Env::start("cli-tables", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);
    let out = env
        .client(&repo.path, &["run", "specs/demo.md", "PLAN.md"])
        .await;
    let text = out.ok().to_string();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Run created: "))
        .unwrap_or_else(|| panic!("no run id in: {text}"))
        .trim()
        .to_string();
    assert!(text.contains("status: PENDING"), "{text}");
    assert!(text.contains("specs/demo.md"), "{text}");
    env.wait_status(&id, "COMPLETED").await;

    let list = env.client(&repo.path, &["list"]).await.ok().to_string();
    assert_eq!(
        header(&list)[..5],
        ["ID", "NAME", "STATUS", "WORKSPACE", "CREATED"]
    );
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the run's row");
    assert!(
        row.contains("demo") && row.contains("COMPLETED") && row.contains(" ws "),
        "{row}"
    );
    let v = env.client(&repo.path, &["list", "--json"]).await.json();
    assert_eq!(v["runs"][0]["id"], id.as_str());
    let v = env
        .client(&repo.path, &["list", "--json", "--status", "completed"])
        .await
        .json();
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1));
    let none = env
        .client(&repo.path, &["list", "--status", "running"])
        .await
        .ok()
        .to_string();
    assert_eq!(none.trim(), "No runs found.");
    let ws = repo.path.canonicalize().expect("canonical");
    let v = env
        .client(
            &repo.path,
            &["list", "--json", "--workspace", &ws.to_string_lossy()],
        )
        .await
        .json();
    assert_eq!(v["runs"].as_array().map(Vec::len), Some(1));
    // Without a value: the workspace of the current directory, like `loopctl list --workspace`.
    let other = Repo::create(env.dir.path(), "other", 1, "tick", &[]);
    for (cwd, want) in [
        (repo.path.clone(), 1),
        (repo.path.join("specs"), 1),
        (other.path.clone(), 0),
    ] {
        let v = env
            .client(&cwd, &["list", "--json", "--workspace"])
            .await
            .json();
        assert_eq!(v["runs"].as_array().map(Vec::len), Some(want), "{cwd:?}");
    }
    let line = env
        .client(&repo.path, &["list", "--status", "done"])
        .await
        .error_line();
    assert!(
        line.contains("invalid --status") && line.contains("COMPLETED"),
        "{line}"
    );

    let text = env
        .client(&repo.path, &["inspect", &id])
        .await
        .ok()
        .to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("status") && l.contains("COMPLETED")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("run branch")), "{text}");
    let steps_header = text
        .lines()
        .find(|l| l.starts_with("STEP"))
        .expect("a steps table");
    assert!(steps_header.contains("PHASE") && steps_header.contains("STATUS"));
    assert!(text.contains("implementation"), "{text}");
    let v = env
        .client(&repo.path, &["inspect", "--json", &id])
        .await
        .json();
    assert_eq!(v["run"]["id"], id.as_str());
    assert!(v["steps"].as_array().is_some_and(|s| !s.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_run_output_and_returns_when_the_run_has_ended() {
    let env = Env::start("cli-tail", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 2, "tick", &[]);
    let id = env.submit(&repo).await;
    // Started while the run runs: follows it to the end.
    let live = env.client(&repo.path, &["tail", "-f", &id]).await;
    let text = live.ok().to_string();
    assert!(text.contains("Worked on: task number 1"), "{text}");
    assert!(text.contains("Worked on: task number 2"), "{text}");
    assert!(text.contains("<promise>COMPLETE</promise>"), "{text}");
    assert_eq!(env.status(&id).await, "COMPLETED");
    let again = env.client(&repo.path, &["tail", &id]).await;
    assert_eq!(again.ok(), text, "a replay prints the same bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_verbs_change_the_run_and_refusals_are_one_error_line() {
    let env = Env::start("cli-control", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "hang", &[]);
    let id = env.submit(&repo).await;
    env.wait_status(&id, "RUNNING").await;
    let out = env.client(&repo.path, &["pause", &id]).await;
    assert_eq!(out.ok().trim(), format!("Run {id} paused"));
    assert_eq!(env.status(&id).await, "PAUSED");
    let out = env.client(&repo.path, &["resume", &id]).await;
    assert_eq!(out.ok().trim(), format!("Run {id} resumed"));
    assert_eq!(env.status(&id).await, "RUNNING");
    let v = env
        .client(&repo.path, &["pause", "--json", &id])
        .await
        .json();
    assert_eq!(v, json!({"id": id, "action": "pause", "ok": true}));
    let out = env.client(&repo.path, &["cancel", &id]).await;
    assert_eq!(out.ok().trim(), format!("Run {id} canceled"));
    assert_eq!(env.status(&id).await, "CANCELED");
    let line = env.client(&repo.path, &["resume", &id]).await.error_line();
    assert!(line.contains("cannot resume a canceled run"), "{line}");
    let line = env.client(&repo.path, &["retry", &id]).await.error_line();
    assert!(line.contains("canceled"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_requeues_a_failed_run() {
    let env = Env::start("cli-retry", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "fail", &[]);
    let id = env.submit(&repo).await;
    env.wait_status(&id, "FAILED").await;
    let out = env.client(&repo.path, &["retry", &id]).await;
    assert_eq!(out.ok().trim(), format!("Run {id} re-queued"));
    let text = env
        .client(&repo.path, &["inspect", &id])
        .await
        .ok()
        .to_string();
    assert!(text.lines().any(|l| l.starts_with("status")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_artifacts_list_and_a_download_matches_its_checksum() {
    let env = Env::start("cli-artifacts", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);
    let id = env.submit(&repo).await;
    env.wait_status(&id, "COMPLETED").await;

    let text = env.client(&repo.path, &["workers"]).await.ok().to_string();
    assert_eq!(header(&text)[..3], ["ID", "HOST", "STATUS"]);
    let table: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(table.len(), 2, "the local runner: {text}");
    // Then the agent account the run's steps counted against, with its limit.
    let accounts: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Agent accounts:")
        .collect();
    assert_eq!(accounts.len(), 3, "one account: {text}");
    assert!(accounts[2].starts_with("opus:sh:"), "{text}");
    let v = env.client(&repo.path, &["workers", "--json"]).await.json();
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(1));

    let text = env
        .client(&repo.path, &["artifacts", &id])
        .await
        .ok()
        .to_string();
    assert_eq!(header(&text), ["NAME", "KIND", "SIZE", "SHA256"]);
    assert!(text.lines().any(|l| l.starts_with("report.tsv")), "{text}");
    let v = env
        .client(&repo.path, &["artifacts", "--json", &id])
        .await
        .json();
    let list = v["artifacts"].as_array().expect("artifacts").clone();
    assert!(!list.is_empty());
    for a in &list {
        let name = a["name"].as_str().expect("name");
        let file = env
            .dir
            .path()
            .join(format!("dl-{}", name.replace('/', "_")));
        let out = env
            .client(
                &repo.path,
                &[
                    "artifacts",
                    &id,
                    "--get",
                    name,
                    "-o",
                    &file.to_string_lossy(),
                ],
            )
            .await;
        out.ok();
        let bytes = std::fs::read(&file).expect("downloaded file");
        assert_eq!(
            bytes.len() as u64,
            a["size"].as_u64().unwrap_or(u64::MAX),
            "{name}"
        );
        assert_eq!(hex::encode(Sha256::digest(&bytes)), a["sha256"], "{name}");
    }
    // To stdout.
    let out = env
        .client(&repo.path, &["artifacts", &id, "--get", "report.tsv"])
        .await;
    let report = list
        .iter()
        .find(|a| a["name"] == "report.tsv")
        .expect("report");
    assert_eq!(
        hex::encode(Sha256::digest(out.ok().as_bytes())),
        report["sha256"]
    );
    let line = env
        .client(
            &repo.path,
            &["artifacts", &id, "--get", "nope.txt", "-o", "x"],
        )
        .await
        .error_line();
    assert!(line.contains("not found"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_config_sends_the_local_file_and_stored_names_print_escaped() {
    use diesel::prelude::*;
    let env = Env::start("cli-config", &[]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);
    std::fs::write(
        repo.path.join("local.conf"),
        "reviewer=false\niterations=2\n",
    )
    .expect("file");
    let v = env
        .client(
            &repo.path,
            &[
                "run",
                "--json",
                "--config",
                "local.conf",
                "specs/demo.md",
                "PLAN.md",
            ],
        )
        .await
        .json();
    let config: serde_json::Value =
        serde_json::from_str(v["run"]["config_json"].as_str().expect("config_json")).expect("JSON");
    assert_eq!(
        (config["reviewer"].clone(), config["iterations"].clone()),
        (json!(false), json!(2))
    );
    let id = v["run"]["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "COMPLETED").await;
    let line = env
        .client(
            &repo.path,
            &["run", "--config", "missing.conf", "specs/demo.md"],
        )
        .await
        .error_line();
    assert!(
        line.contains("cannot read --config") && line.contains("missing.conf"),
        "{line}"
    );

    // A name stored before names were checked (or written by another tool) prints escaped.
    let db = env.daemon.data_dir.join("loopd.db");
    let mut c = crate::support::open_live_sqlite(&db);
    diesel::sql_query("UPDATE runs SET name = ? WHERE id = ?")
        .bind::<diesel::sql_types::Text, _>("evil\n\u{1b}[2Jname")
        .bind::<diesel::sql_types::Text, _>(&id)
        .execute(&mut c)
        .expect("update");
    for args in [vec!["list"], vec!["inspect", id.as_str()]] {
        let out = env.client(&repo.path, &args).await.ok().to_string();
        assert!(
            !out.contains('\u{1b}'),
            "{args:?} printed an escape: {out:?}"
        );
        assert!(out.contains("evil\\n\\u{1b}[2Jname"), "{args:?}: {out}");
    }
}
