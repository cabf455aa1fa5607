//! What the log says with `log_format = "json"`: one JSON object per line; the lines logged
//! while an actor handles a message carry that message's worker, step and lease epoch; and a
//! 5xx answer (the database dropped under the running controller) names its request id, which
//! the log lines of that request carry.

use crate::harness::{answer, Ctl, Worker};
use crate::support::pg::TestDb;
use crate::support::wait_for;
use serde_json::Value;
use std::time::Duration;

/// Every line of the controller's log, each parsed (a line that is not JSON fails the test).
fn log_lines(ctl: &Ctl) -> Vec<Value> {
    let text = std::fs::read_to_string(&ctl.proc.log).expect("log");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The line whose message is `msg`, with its spans.
fn line_of<'a>(lines: &'a [Value], msg: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["fields"]["message"] == msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_actor_span_and_a_5xx_names_its_request_id() {
    let mut ctl = Ctl::start("ctl-json-logs", &[("LOOPD__LOG_FORMAT", "json")]).await;
    let w = ctl.worker("host-a", &[]).await;
    let run = ctl.submit("logs", 1, &[]).await;
    let (lease, _) = w.take().await;
    assert_eq!(w.complete(&lease, &Worker::completion(&lease)).await.0, 200);

    let line = wait_for(
        "the completion's log line",
        Duration::from_secs(10),
        || async { line_of(&log_lines(&ctl), "step completed").cloned() },
    )
    .await;
    let span = line["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "CompleteStep"))
        .unwrap_or_else(|| panic!("in the handler's span: {line}"));
    assert_eq!(span["worker"], w.id.as_str(), "{line}");
    assert_eq!(span["step"], lease.step.as_str(), "{line}");
    assert_eq!(span["epoch"], lease.epoch, "{line}");
    assert_eq!(line["fields"]["run_id"], run.as_str(), "{line}");

    // DROP DATABASE … WITH (FORCE) under the running controller: reads now fail.
    drop(std::mem::replace(&mut ctl.db, TestDb::create()));
    let (status, body) = wait_for("a 5xx", Duration::from_secs(30), || async {
        let a = answer(ctl.client.get(ctl.url("/runs"))).await;
        (a.0 >= 500).then_some(a)
    })
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(body["error"].is_string(), "{body}");
    let id = body["request_id"].as_str().expect("request_id").to_string();
    assert_eq!(id.len(), 36, "a UUID: {body}");

    let lines = wait_for("the 5xx's log line", Duration::from_secs(10), || async {
        let lines = log_lines(&ctl);
        let found = lines
            .iter()
            .any(|l| l["level"] == "ERROR" && l["span"]["request_id"] == id.as_str());
        found.then_some(lines)
    })
    .await;
    // The request's own span (method, path) carries the same id.
    assert!(
        lines.iter().any(|l| l["spans"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "HTTP request"
                && s["request_id"] == id.as_str()
                && s["http.target"] == "/runs"))),
        "no line of request {id}"
    );
}
