//! What API.md §1 says a Run and a Step look like on the wire: every key present, enums spelled
//! as documented, timestamps RFC 3339 UTC, `config_json` a JSON string. Shared by the tests.

use serde_json::Value;

const RUN_KEYS: &[&str] = &[
    "id",
    "name",
    "name_source",
    "status",
    "workspace_root",
    "spec_path",
    "plan_path",
    "worktree",
    "worktree_cleanup_status",
    "worktree_cleaned_at",
    "config_json",
    "created_at",
    "updated_at",
    "review_status",
    "review_action_at",
    "pr_url",
    "merge_commit",
    "workspace_source",
    "repo_url",
    "repo_ref",
    "artifact_store",
    "labels",
    "waiting_reason",
];

const STEP_KEYS: &[&str] = &[
    "id",
    "run_id",
    "phase",
    "status",
    "attempt",
    "started_at",
    "ended_at",
    "exit_code",
    "prompt_path",
    "output_path",
    "worker_id",
    "lease_epoch",
    "lease_expires_at",
];

/// A UTC RFC 3339 timestamp.
pub fn assert_utc(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{what} = {s} is not RFC 3339: {e}"));
    assert_eq!(t.offset().local_minus_utc(), 0, "{what} = {s} is not UTC");
}

fn assert_opt_utc(v: &Value, what: &str) {
    if !v.is_null() {
        assert_utc(v, what);
    }
}

pub fn one_of(v: &Value, allowed: &[&str], what: &str) {
    let s = v.as_str().unwrap_or_default();
    assert!(
        allowed.contains(&s),
        "{what} = {v} is not one of {allowed:?}"
    );
}

/// Every key of API.md's Run object, with the documented types and spellings.
pub fn assert_run_shape(run: &Value) {
    let obj = run.as_object().expect("run is an object");
    for k in RUN_KEYS {
        assert!(obj.contains_key(*k), "run lacks key {k}: {run}");
    }
    assert!(uuid::Uuid::parse_str(run["id"].as_str().unwrap_or_default()).is_ok());
    one_of(&run["name_source"], &["spec_slug", "haiku"], "name_source");
    one_of(
        &run["status"],
        &[
            "PENDING",
            "RUNNING",
            "PAUSED",
            "COMPLETED",
            "FAILED",
            "CANCELED",
        ],
        "status",
    );
    one_of(
        &run["review_status"],
        &["pending", "reviewed", "scrapped", "merged", "pr_created"],
        "review_status",
    );
    one_of(
        &run["workspace_source"],
        &["shared_fs", "git"],
        "workspace_source",
    );
    one_of(&run["artifact_store"], &["fs", "s3"], "artifact_store");
    assert!(run["labels"].is_array(), "labels is a list");
    assert_utc(&run["created_at"], "created_at");
    assert_utc(&run["updated_at"], "updated_at");
    assert_opt_utc(&run["worktree_cleaned_at"], "worktree_cleaned_at");
    assert_opt_utc(&run["review_action_at"], "review_action_at");
    // config_json is the effective config serialized as a JSON *string*.
    let cj = run["config_json"]
        .as_str()
        .unwrap_or_else(|| panic!("config_json must be a string: {}", run["config_json"]));
    let parsed: Value = serde_json::from_str(cj).expect("config_json holds JSON");
    assert!(parsed.is_object(), "config_json holds an object: {cj}");
    if let Some(w) = run["worktree"].as_object() {
        for k in [
            "base_branch",
            "run_branch",
            "merge_target_branch",
            "merge_strategy",
            "worktree_path",
            "provider",
        ] {
            assert!(w.contains_key(k), "worktree lacks {k}: {run}");
        }
        one_of(
            &w["merge_strategy"],
            &["none", "merge", "squash"],
            "merge_strategy",
        );
        assert_eq!(w["provider"], "git");
    }
}

/// Every key of API.md's Step object, with the documented types and spellings.
pub fn assert_step_shape(step: &Value) {
    let obj = step.as_object().expect("step is an object");
    for k in STEP_KEYS {
        assert!(obj.contains_key(*k), "step lacks key {k}: {step}");
    }
    one_of(
        &step["phase"],
        &[
            "implementation",
            "review",
            "verification",
            "watchdog",
            "merge",
        ],
        "phase",
    );
    one_of(
        &step["status"],
        &[
            "QUEUED",
            "IN_PROGRESS",
            "SUCCEEDED",
            "FAILED",
            "RETRYING",
            "CANCELED",
        ],
        "step status",
    );
    assert!(step["attempt"].as_u64().is_some_and(|a| a >= 1));
    assert_opt_utc(&step["started_at"], "started_at");
    assert_opt_utc(&step["ended_at"], "ended_at");
    assert_opt_utc(&step["lease_expires_at"], "lease_expires_at");
}
