//! Secrets stay on the worker: the agent and the verify commands see only the variables the
//! worker's `agent_env` allowlist admits, plus what the assignment sets.

use crate::cluster::{path_str, Cluster, Timings, JOIN_TOKEN};
use crate::support::repo::Repo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sees_only_allowlisted_variables_of_the_worker() {
    let mut c = Cluster::start("secrets", 0, Timings::default()).await;
    c.add_worker(
        &[],
        &[
            ("LOOPD__WORKER__AGENT_ENV", "PATH,HOME,ALLOWED_*"),
            ("ALLOWED_SETTING", "visible-value"),
            ("SECRET_TOKEN", "hunter2-not-for-agents"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-not-for-agents"),
            ("LOOPD_WORKER_JOIN_TOKEN", JOIN_TOKEN),
        ],
    )
    .await;
    let agent_env = c.dir.path().join("agent-env.txt");
    let verify_env = c.dir.path().join("verify-env.txt");
    let mode = format!("env {}", path_str(&agent_env));
    let verify = format!("verify_cmds=env > {}", path_str(&verify_env));
    let repo = Repo::create(c.dir.path(), "origin", 1, &mode, &[&verify]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_status(&id, "COMPLETED").await;

    for file in [&agent_env, &verify_env] {
        let env = std::fs::read_to_string(file).expect("the environment dump");
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|p| p.0)
            .collect();
        assert!(env.contains("ALLOWED_SETTING=visible-value"), "{env}");
        assert!(
            env.lines().any(|l| l == format!("LOOPD_RUN_ID={id}")),
            "{env}"
        );
        assert!(names.contains(&"PATH"), "{names:?}");
        for secret in [
            "hunter2-not-for-agents",
            "aws-secret-not-for-agents",
            JOIN_TOKEN,
        ] {
            assert!(
                !env.contains(secret),
                "{} leaks a secret: {env}",
                file.display()
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("LOOPD__") || *n == "SECRET_TOKEN"),
            "{names:?}"
        );
    }
}
