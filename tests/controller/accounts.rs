//! The agent accounts' adaptive concurrency limit on a real controller over Postgres: claims
//! hold an account's steps beyond its limit, a 429/529 hand-back halves it (once a wave), a
//! run of completions grows it again, a usage limit pauses the account until its reset, the
//! state survives a restart, and `api_limits.enabled = false` turns it all off.

use crate::harness::{Ctl, Lease, Worker};
use crate::support::wait_for;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One account's stored state.
#[derive(QueryableByName, Debug, Clone, PartialEq)]
pub struct AccountState {
    #[diesel(sql_type = Text)]
    pub account: String,
    #[diesel(sql_type = Integer)]
    pub concurrency_limit: i32,
    #[diesel(sql_type = Integer)]
    pub max_concurrent: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_signal: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub pause_until: Option<i64>,
}

impl Ctl {
    /// Every account's row.
    pub fn accounts(&self) -> Vec<AccountState> {
        diesel::sql_query(
            "SELECT account, concurrency_limit, max_concurrent, last_signal, pause_until \
               FROM api_accounts ORDER BY account",
        )
        .load(&mut self.pg())
        .expect("api_accounts")
    }

    /// The one account's row, once it exists.
    async fn account(&self) -> AccountState {
        wait_for("the account's row", Duration::from_secs(10), || async {
            self.accounts().into_iter().next()
        })
        .await
    }

    /// Waits until the account's limit is `n`.
    async fn limit_becomes(&self, n: i32) -> AccountState {
        wait_for(&format!("limit {n}"), Duration::from_secs(15), || async {
            self.accounts()
                .into_iter()
                .next()
                .filter(|a| a.concurrency_limit == n)
        })
        .await
    }
}

fn settings<'a>(max: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "12"),
        ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "12"),
        ("LOOPD__API_LIMITS__MAX_CONCURRENT", max),
        ("LOOPD__API_LIMITS__RECOVER_AFTER", "2"),
    ];
    v.extend_from_slice(extra);
    v
}

/// `n` runs submitted, each with its first (agent) step queued.
async fn runs(ctl: &Ctl, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(ctl.submit(&format!("acct{i}"), 3, &[]).await);
    }
    ids
}

/// Claims with every worker in turn (each waiting `wait_ms`); returns the leases granted.
async fn claim_all(workers: &[Worker], wait_ms: u64) -> Vec<(usize, Lease)> {
    let mut got = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        let (status, a) = w.claim(wait_ms).await;
        if status == 200 {
            got.push((
                i,
                Lease {
                    step: a["step_id"].as_str().expect("step_id").into(),
                    run: a["run_id"].as_str().expect("run_id").into(),
                    epoch: a["epoch"].as_i64().expect("epoch"),
                },
            ));
        } else {
            assert_eq!(status, 204, "claim: {a}");
        }
    }
    got
}

/// Hands `l` back as the worker does when the agent API pushed back.
async fn push_back(w: &Worker, l: &Lease, kind: &str, pause_ms: u64) {
    let (status, v) = w
        .post(
            &format!("/steps/{}/release", l.step),
            json!({"epoch": l.epoch, "reason": format!("agent API {kind}: retry in 1 s"),
                   "retry_after_ms": pause_ms}),
        )
        .await;
    assert_eq!(status, 200, "release: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_dispatch_halves_on_push_back_and_grows_after_successes() {
    let ctl = Ctl::start("acct-aimd", &settings("4", &[])).await;
    runs(&ctl, 6).await;
    let mut workers = Vec::new();
    for i in 0..6 {
        workers.push(ctl.worker(&format!("a{i}"), &[]).await);
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beats: Vec<_> = workers.iter().map(|w| w.keep_alive(held.clone())).collect();

    // Six agent steps queued, four slots: four go out, the other two wait.
    let got = claim_all(&workers, 300).await;
    assert_eq!(got.len(), 4, "{got:?}");
    held.lock()
        .unwrap()
        .extend(got.iter().map(|(_, l)| l.clone()));
    let a = ctl.account().await;
    assert_eq!((a.concurrency_limit, a.max_concurrent), (4, 4), "{a:?}");
    assert!(a.account.starts_with("opus:"), "{a:?}");

    // An overload halves the limit and holds the whole account for the step's pause; a rate
    // limit on a step of the same wave changes neither again.
    let (i, l) = &got[0];
    push_back(&workers[*i], l, "overloaded", 2_000).await;
    let a = ctl.limit_becomes(2).await;
    assert_eq!(a.last_signal.as_deref(), Some("overloaded"));
    let paused = a.pause_until.expect("the account is held for the pause");
    let (i, l) = &got[1];
    push_back(&workers[*i], l, "rate_limited", 60_000).await;
    let a = ctl.account().await;
    assert_eq!(
        (a.concurrency_limit, a.last_signal.as_deref(), a.pause_until),
        (2, Some("rate_limited"), Some(paused))
    );

    // The runs held by the account say so; `GET /workers` and `/metrics` show the limit.
    wait_for(
        "a run waiting for the account",
        Duration::from_secs(10),
        || async {
            let (_, v) = crate::harness::answer(ctl.client.get(ctl.url("/runs"))).await;
            v["runs"].as_array()?.iter().find_map(|r| {
                let why = r["waiting_reason"].as_str()?;
                why.starts_with("agent API limited: 2 of 4 slots; rate limited")
                    .then_some(())
            })
        },
    )
    .await;
    let (_, v) = crate::harness::answer(ctl.client.get(ctl.url("/workers"))).await;
    let acct = &v["accounts"][0];
    assert_eq!(
        (
            acct["account"].as_str(),
            &acct["limit"],
            &acct["max_concurrent"],
            &acct["in_use"]
        ),
        (Some(a.account.as_str()), &json!(2), &json!(4), &json!(2)),
        "{v}"
    );
    assert_eq!(acct["last_signal"], "rate_limited", "{v}");
    let (_, text) = crate::harness::answer(ctl.client.get(ctl.url("/metrics"))).await;
    let text = text.as_str().unwrap_or_default().to_string();
    for line in [
        format!("loopd_agent_account_limit{{account=\"{}\"}} 2", a.account),
        format!("loopd_agent_account_in_use{{account=\"{}\"}} 2", a.account),
    ] {
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }

    // Two running, limit two: the two still queued (no pause of their own) wait.
    let idle: Vec<Worker> = workers
        .iter()
        .enumerate()
        .filter(|(i, _)| !got[2..].iter().any(|(j, _)| j == i))
        .map(|(_, w)| w.clone())
        .collect();
    assert!(claim_all(&idle, 300).await.is_empty());

    // Two completions of the account's steps: the limit grows by one (recover_after = 2),
    // and one more agent step goes out.
    for (i, l) in &got[2..] {
        let (status, v) = workers[*i].complete(l, &Worker::completion(l)).await;
        assert_eq!(status, 200, "{v}");
    }
    ctl.limit_becomes(3).await;
    let more = claim_all(&idle, 2_000).await;
    let agent: Vec<_> = {
        let mut v = Vec::new();
        for (i, l) in more {
            if ctl.step(&l.run, &l.step).await["phase"] == "implementation" {
                v.push((i, l));
            }
        }
        v
    };
    assert!(
        !agent.is_empty() && agent.len() <= 3,
        "agent steps after growing: {agent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_pauses_the_account_until_its_reset_and_a_restart_keeps_the_state() {
    let mut ctl = Ctl::start("acct-pause", &settings("8", &[])).await;
    runs(&ctl, 3).await;
    let w = ctl.worker("p1", &[]).await;
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beat = w.keep_alive(held.clone());
    let (l, _) = w.take().await;
    // Usage limit for three seconds: none of the account's steps goes out meanwhile.
    push_back(&w, &l, "usage_limit", 3_000).await;
    let a = ctl.account().await;
    let until = a.pause_until.expect("paused");
    assert_eq!(a.concurrency_limit, 8, "a usage limit does not halve");
    let (status, _) = w.claim(1_000).await;
    assert_eq!(status, 204, "nothing goes out while the account is paused");
    wait_for(
        "a run waiting for the pause",
        Duration::from_secs(10),
        || async {
            let (_, v) = crate::harness::answer(ctl.client.get(ctl.url("/runs"))).await;
            v["runs"].as_array()?.iter().find_map(|r| {
                let why = r["waiting_reason"].as_str()?;
                why.starts_with("agent API usage limit: paused until")
                    .then_some(())
            })
        },
    )
    .await;

    // The state is in the database: a restarted controller holds the pause too.
    ctl.proc.signal(nix::sys::signal::Signal::SIGTERM);
    ctl.proc.wait_exit(Duration::from_secs(20)).await;
    ctl.proc.start();
    ctl.proc.wait_ready("/ready").await;
    assert_eq!(ctl.account().await.pause_until, Some(until));
    let w = ctl.worker("p2", &[]).await;
    let started = std::time::Instant::now();
    let (status, v) = w.claim(20_000).await;
    assert_eq!(status, 200, "claimable after the reset: {v}");
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        now_ms >= until - 50,
        "claimed {} ms before the pause ended (waited {:?})",
        until - now_ms,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halved_limit_survives_a_restart() {
    let mut ctl = Ctl::start("acct-restart", &settings("4", &[])).await;
    runs(&ctl, 2).await;
    let w = ctl.worker("r1", &[]).await;
    let (l, _) = w.take().await;
    push_back(&w, &l, "rate_limited", 60_000).await;
    ctl.limit_becomes(2).await;
    ctl.proc.signal(nix::sys::signal::Signal::SIGTERM);
    ctl.proc.wait_exit(Duration::from_secs(20)).await;
    ctl.proc.start();
    ctl.proc.wait_ready("/ready").await;
    let a = ctl.account().await;
    assert_eq!((a.concurrency_limit, a.max_concurrent), (2, 4), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_the_limit_and_its_push_back() {
    let ctl = Ctl::start("acct-two", &settings("2", &[])).await;
    let other = ctl.proc.sibling(&ctl.dir.path().join("second"));
    other.wait_ready("/ready").await;
    runs(&ctl, 6).await;
    let mut workers = Vec::new();
    for i in 0..6 {
        let w = ctl.worker(&format!("t{i}"), &[]).await;
        // Half of them claim from the second controller.
        workers.push(if i % 2 == 0 { w } else { w.at(&other.url()) });
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beats: Vec<_> = workers.iter().map(|w| w.keep_alive(held.clone())).collect();
    // Every worker claims at once, on both controllers: two slots, two steps out.
    let claims = workers.iter().map(|w| w.claim(1_500));
    let answers = futures_util::future::join_all(claims).await;
    let got: Vec<(usize, Lease)> = answers
        .iter()
        .enumerate()
        .filter(|(_, (status, _))| *status == 200)
        .map(|(i, (_, a))| {
            let lease = Lease {
                step: a["step_id"].as_str().expect("step_id").into(),
                run: a["run_id"].as_str().expect("run_id").into(),
                epoch: a["epoch"].as_i64().expect("epoch"),
            };
            (i, lease)
        })
        .collect();
    assert_eq!(got.len(), 2, "{answers:?}");
    held.lock()
        .unwrap()
        .extend(got.iter().map(|(_, l)| l.clone()));
    // A 529 handed back to one controller halves the limit for both: one runs, none more.
    let (i, l) = &got[0];
    push_back(&workers[*i], l, "overloaded", 60_000).await;
    ctl.limit_becomes(1).await;
    let idle: Vec<Worker> = workers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != got[1].0)
        .map(|(_, w)| w.clone())
        .collect();
    assert!(claim_all(&idle, 300).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_limits_off_nothing_is_held() {
    let ctl = Ctl::start(
        "acct-off",
        &settings("1", &[("LOOPD__API_LIMITS__ENABLED", "false")]),
    )
    .await;
    runs(&ctl, 3).await;
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(ctl.worker(&format!("o{i}"), &[]).await);
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beats: Vec<_> = workers.iter().map(|w| w.keep_alive(held.clone())).collect();
    let got = claim_all(&workers, 2_000).await;
    assert_eq!(got.len(), 3, "max_concurrent 1 ignored when off: {got:?}");
    held.lock()
        .unwrap()
        .extend(got.iter().map(|(_, l)| l.clone()));
    let (i, l) = &got[0];
    push_back(&workers[*i], l, "overloaded", 60_000).await;
    assert!(ctl.accounts().is_empty(), "no account recorded when off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_held_only_by_its_maximum_says_so_in_the_log_and_the_run() {
    let ctl = Ctl::start("acct-cap", &settings("1", &[])).await;
    runs(&ctl, 2).await;
    let mut workers = Vec::new();
    for i in 0..2 {
        workers.push(ctl.worker(&format!("m{i}"), &[]).await);
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beats: Vec<_> = workers.iter().map(|w| w.keep_alive(held.clone())).collect();
    let got = claim_all(&workers, 300).await;
    assert_eq!(got.len(), 1, "one slot: {got:?}");
    held.lock().unwrap().push(got[0].1.clone());

    // No push-back ever: the run held says it is the setting, not the API, and the log says
    // which setting to raise.
    wait_for(
        "the held run naming the setting",
        Duration::from_secs(10),
        || async {
            let (_, v) = crate::harness::answer(ctl.client.get(ctl.url("/runs"))).await;
            v["runs"].as_array()?.iter().find_map(|r| {
                (r["waiting_reason"]
                    == "agent API limited: 1 of 1 slots (api_limits.max_concurrent)")
                    .then_some(())
            })
        },
    )
    .await;
    let said = "agent account at [api_limits] max_concurrent with steps waiting";
    wait_for("the warning", Duration::from_secs(10), || async {
        ctl.proc.log_text().contains(said).then_some(())
    })
    .await;
}

/// Drives `w` through its runs' steps (completing each with `claim_next`) until it holds a
/// verification step; returns that lease.
async fn until_verification(ctl: &Ctl, w: &Worker) -> Lease {
    wait_for("a verification step", Duration::from_secs(60), || async {
        let (status, a) = w.claim(1_000).await;
        if status != 200 {
            return None;
        }
        let mut l = Lease {
            step: a["step_id"].as_str()?.into(),
            run: a["run_id"].as_str()?.into(),
            epoch: a["epoch"].as_i64()?,
        };
        loop {
            if ctl.step(&l.run, &l.step).await["phase"] == "verification" {
                return Some(l);
            }
            let mut body = Worker::completion(&l);
            body["claim_next"] = json!(true);
            let (status, v) = w.complete(&l, &body).await;
            assert_eq!(status, 200, "{v}");
            let next = &v["next"];
            l = Lease {
                step: next["step_id"].as_str()?.into(),
                run: next["run_id"].as_str()?.into(),
                epoch: next["epoch"].as_i64()?,
            };
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_at_once_lease_new_agent_steps_only_as_far_as_the_limit() {
    let ctl = Ctl::start("acct-batch", &settings("2", &[])).await;
    runs(&ctl, 4).await;
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(ctl.worker(&format!("b{i}"), &[]).await);
    }
    let held = Arc::new(Mutex::new(Vec::new()));
    let _beats: Vec<_> = workers.iter().map(|w| w.keep_alive(held.clone())).collect();
    // Each worker ends up holding its run's verification step: no agent step in flight.
    let drives = workers.iter().map(|w| until_verification(&ctl, w));
    let verifying = futures_util::future::join_all(drives).await;
    held.lock().unwrap().extend(verifying.iter().cloned());
    assert_eq!(ctl.accounts()[0].concurrency_limit, 2);

    // All four complete at once, each asking for its next step: every run queues an agent
    // step, and the completions (in one batch or not) lease at most two of them.
    let done = verifying.iter().zip(&workers).map(|(l, w)| async move {
        let mut body = Worker::completion(l);
        body["claim_next"] = json!(true);
        let (status, v) = w.complete(l, &body).await;
        assert_eq!(status, 200, "{v}");
        v["next"]["step_id"].as_str().map(str::to_string)
    });
    let next: Vec<String> = futures_util::future::join_all(done)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(next.len(), 2, "agent steps leased at once: {next:?}");
    let (_, v) = crate::harness::answer(ctl.client.get(ctl.url("/workers"))).await;
    assert_eq!(v["accounts"][0]["in_use"], json!(2), "{v}");
}
