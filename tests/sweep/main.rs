//! The bad-input sweep: thousands of malformed, oversized, mistyped, traversing and
//! wrongly-authenticated requests over every route of both APIs of a real controller. Every
//! answer must be a 4xx with a JSON `{"error","code"}` body — never a 5xx, never a dropped
//! connection — and the database must be exactly as it was before the sweep.

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod cases;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use support::pg::TestDb;
use support::pool::{self, controller_env, JOIN};
use support::repo::Repo;
use support::test_dir;

/// A status and body, or why no answer came.
type Answer = Result<(u16, String), String>;

const CLIENT_TOKEN: &str = "sweep-client-token";
/// A client token with the `read` scope only.
pub const READ_TOKEN: &str = "sweep-read-only-token";
/// A client token with `submit` but not `exec` (nor `admin`).
pub const SUBMIT_TOKEN: &str = "sweep-submit-only-token";

#[derive(QueryableByName, Debug, PartialEq, Eq)]
struct Digest {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Text)]
    md5: String,
}

/// A fingerprint of every row that a rejected request could have changed (heartbeat times
/// and worker status excluded: liveness is not state a request may be refused on).
fn state(url: &str) -> Vec<Digest> {
    let mut c = diesel::pg::PgConnection::establish(url).expect("connect");
    let queries = [
        "SELECT count(*) AS n, coalesce(md5(string_agg(id || status || updated_at::text || coalesce(waiting_reason,''), ',' ORDER BY id)), '') AS md5 FROM runs",
        "SELECT count(*) AS n, coalesce(md5(string_agg(id || status || lease_epoch::text || output_size::text, ',' ORDER BY id)), '') AS md5 FROM steps",
        "SELECT count(*) AS n, coalesce(md5(string_agg(id, ',' ORDER BY id)), '') AS md5 FROM events",
        "SELECT count(*) AS n, coalesce(md5(string_agg(id || sha256, ',' ORDER BY id)), '') AS md5 FROM artifacts",
        "SELECT count(*) AS n, coalesce(md5(string_agg(id || token_hash, ',' ORDER BY id)), '') AS md5 FROM workers",
        "SELECT count(*) AS n, coalesce(md5(string_agg(step_id || worker_id || epoch::text || expires_at::text, ',' ORDER BY step_id)), '') AS md5 FROM leases",
    ];
    queries
        .iter()
        .map(|q| diesel::sql_query(*q).get_result::<Digest>(&mut c).expect(q))
        .collect()
}

/// What the sweep needs to know about the live system.
pub struct Ids {
    pub run: String,
    pub step: String,
    pub worker: String,
    pub worker_token: String,
    pub other_worker: String,
    pub other_token: String,
    pub epoch: i64,
}

async fn register(client: &reqwest::Client, base: &str, host: &str) -> (String, String) {
    let v: Value = client
        .post(format!("{base}/workers/register"))
        .bearer_auth(JOIN)
        .json(
            &json!({"hostname": host, "capabilities": {"labels": [], "slots": 1, "version": "t"}}),
        )
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("register JSON");
    (
        v["worker_id"].as_str().unwrap().into(),
        v["token"].as_str().unwrap().into(),
    )
}

/// A run whose first step is leased to a simulated worker, so every route has live ids.
async fn setup(client: &reqwest::Client, base: &str, repo: &Repo) -> Ids {
    let (worker, worker_token) = register(client, base, "sweep-a").await;
    let (other_worker, other_token) = register(client, base, "sweep-b").await;
    let body =
        json!({"spec_path": "specs/demo.md", "plan_path": "PLAN.md", "workspace_root": repo.path});
    let run: Value = client
        .post(format!("{base}/runs"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("create run")
        .json()
        .await
        .expect("run JSON");
    let run_id = run["run"]["id"].as_str().expect("run id").to_string();
    let a: Value = client
        .post(format!("{base}/workers/{worker}/claim"))
        .bearer_auth(&worker_token)
        .json(&json!({"wait_ms": 20000}))
        .send()
        .await
        .expect("claim")
        .json()
        .await
        .expect("assignment");
    Ids {
        run: run_id,
        step: a["step_id"].as_str().expect("step").into(),
        epoch: a["epoch"].as_i64().expect("epoch"),
        worker,
        worker_token,
        other_worker,
        other_token,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_requests_get_clean_4xx_answers_and_change_nothing() {
    let dir = test_dir("sweep");
    let db = TestDb::create();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"dash\"\ntoken = \"{READ_TOKEN}\"\nscopes = [\"read\"]\n\
             [[auth.tokens]]\nname = \"ci\"\ntoken = \"{SUBMIT_TOKEN}\"\nscopes = [\"submit\"]\n"
        ),
    )
    .expect("config file");
    let config = config.to_string_lossy().to_string();
    let env = controller_env(
        &db.url,
        &[
            ("LOOPD_CONFIG", &config),
            ("LOOPD_AUTH_TOKEN", CLIENT_TOKEN),
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
            ("LOOPD__LIMITS__ARTIFACT_BYTES", "1048576"),
            // The setup's two workers use up the registrations; the sweep's valid ones get 429.
            ("LOOPD__LIMITS__REGISTRATIONS_PER_MINUTE", "2"),
        ],
    );
    let controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let repo = Repo::create(dir.path(), "ws", 2, "tick", &[]);
    let ids = setup(&client, &base, &repo).await;
    let before = state(&db.url);

    let requests = cases::all(&ids, CLIENT_TOKEN, JOIN);
    assert!(requests.len() >= 2000, "only {} requests", requests.len());
    let results: Vec<(String, Answer)> = stream::iter(requests)
        .map(|r| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let label = r.label();
                (label, r.send(&client, &base).await)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let mut failures = Vec::new();
    let mut by_status = std::collections::BTreeMap::new();
    for (label, res) in &results {
        match res {
            Err(e) => failures.push(format!("{label}: no answer: {e}")),
            Ok((status, body)) => {
                *by_status.entry(*status).or_insert(0) += 1;
                let json: Option<Value> = serde_json::from_str(body).ok();
                let shaped = json
                    .as_ref()
                    .is_some_and(|v| v["error"].is_string() && v["code"].is_string());
                if *status >= 500 || *status < 400 || !shaped {
                    failures.push(format!("{label}: {status} {body:.200}"));
                }
            }
        }
    }
    println!(
        "{} requests, answers by status: {by_status:?}",
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} bad answers, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    assert_eq!(
        state(&db.url),
        before,
        "a rejected request changed the database"
    );
    let health = client
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("still up");
    assert_eq!(health.status(), 200);
    assert!(
        !controller.log_text().contains(CLIENT_TOKEN),
        "the client token reached the log"
    );
    assert!(
        !controller.log_text().contains(&ids.worker_token),
        "a worker token reached the log"
    );
    for t in [READ_TOKEN, SUBMIT_TOKEN] {
        assert!(
            !controller.log_text().contains(t),
            "a client token reached the log"
        );
    }
}
