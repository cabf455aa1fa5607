//! The steps listing after a postmortem, as the old loopctl reads it: its `inspect` parses
//! `phase` as a closed enum of the five pipeline phases, so `GET /runs/{id}/steps` leaves the
//! postmortem's steps out unless asked for them with `?phases=all` (what `loopd inspect`
//! sends).

use crate::harness::{error_of, Env};
use crate::loopctl;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_loopctl_parses_the_steps_of_a_run_after_its_postmortem() {
    let env = Env::single("postmortem-steps").await;
    let repo = env.repo("ws", 1, "tick");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "COMPLETED").await;
    let pipeline = env.get_json(&format!("/runs/{id}/steps")).await["steps"].clone();

    let r = env
        .post_json(&format!("/runs/{id}/postmortem"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["status"], "ok", "{v}");

    let text = env
        .get(&format!("/runs/{id}/steps"))
        .await
        .text()
        .await
        .expect("body");
    let typed: loopctl::StepsResponse = loopctl::parse(&text);
    assert_eq!(typed.steps.len(), pipeline.as_array().map_or(0, Vec::len));
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(listed["steps"], pipeline, "the pipeline's steps, unchanged");
    for q in ["?phases=pipeline", "?unknown=1"] {
        let v = env.get_json(&format!("/runs/{id}/steps{q}")).await;
        assert_eq!(v["steps"], pipeline, "{q}");
    }

    // loopd's own client asks for every phase.
    let all = env.get_json(&format!("/runs/{id}/steps?phases=all")).await["steps"].clone();
    let all = all.as_array().expect("steps");
    let postmortem: Vec<&Value> = all.iter().filter(|s| s["phase"] == "postmortem").collect();
    assert_eq!(postmortem.len(), 3, "{all:?}");
    assert_eq!(
        all.len(),
        pipeline.as_array().map_or(0, Vec::len) + 3,
        "the pipeline's steps, then the postmortem's"
    );

    let (status, code) = error_of(env.get(&format!("/runs/{id}/steps?phases=every")).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
}
