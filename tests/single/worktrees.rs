//! Worktrees of a workspace: listed with their runs and why they are kept, removed through
//! the API (a dirty one only when forced; a running run is cancelled first), and removed by
//! `worktree_keep_days` once their run has been over that long.

use crate::helpers::{Single, STATE_TIMEOUT};
use crate::support::wait_for;
use serde_json::{json, Value};
use std::path::PathBuf;

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Single {
    pub async fn worktrees(&self, ws: &std::path::Path) -> Value {
        self.get_json(&format!(
            "/worktrees?workspace={}",
            enc(&ws.to_string_lossy())
        ))
        .await
    }

    /// `DELETE /worktrees?…` with the raw query; (status, JSON body or null).
    pub async fn delete_worktree(&self, query: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(&format!("/worktrees?{query}")))
            .send()
            .await
            .expect("DELETE");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn path_of(run: &Value) -> PathBuf {
    PathBuf::from(run["worktree"]["worktree_path"].as_str().expect("worktree"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worktrees_are_listed_with_their_runs_and_removed_on_request() {
    let s = Single::start("worktrees", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;
    let wt = path_of(&run);

    let listing = s.worktrees(&repo.path).await;
    assert_eq!(listing["workspace"], repo.path.to_string_lossy().as_ref());
    let list = listing["worktrees"].as_array().expect("worktrees");
    assert_eq!(
        list.len(),
        1,
        "the primary checkout is not listed: {listing}"
    );
    let w = &list[0];
    assert_eq!(
        PathBuf::from(w["path"].as_str().unwrap_or_default())
            .canonicalize()
            .ok(),
        wt.canonicalize().ok()
    );
    assert_eq!(w["branch"], run["worktree"]["run_branch"]);
    assert_eq!(w["run_id"], id.as_str());
    assert_eq!(w["run_status"], "COMPLETED");
    assert_eq!(w["cleanup_status"], "deferred");
    let after = chrono::DateTime::parse_from_rfc3339(w["remove_after"].as_str().expect("due"))
        .expect("RFC 3339");
    let days = (after.timestamp() - chrono::Utc::now().timestamp()) as f64 / 86400.0;
    assert!(
        (6.9..=7.0).contains(&days),
        "kept 7 days by default: {days}"
    );
    assert_eq!(
        w["commit"].as_str().map(str::trim),
        Some(
            repo.git(&["rev-parse", w["branch"].as_str().unwrap_or_default()])
                .trim()
        )
    );

    // Refusals change nothing.
    let ws = enc(&repo.path.to_string_lossy());
    let p = enc(&wt.to_string_lossy());
    let main = enc(&repo.path.to_string_lossy());
    for (q, status, code) in [
        (format!("path={p}"), 400, "invalid_query"),
        (format!("workspace={ws}"), 400, "invalid_query"),
        (
            format!("workspace={ws}&path={p}&force=yes"),
            400,
            "invalid_query",
        ),
        (format!("workspace=%2Fno%2Fsuch&path={p}"), 404, "not_found"),
        (format!("workspace={ws}&path={main}"), 400, "not_a_worktree"),
    ] {
        let (got, body) = s.delete_worktree(&q).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{q}: {body}"
        );
    }
    std::fs::write(wt.join("scratch.txt"), "uncommitted").expect("write");
    let (got, body) = s.delete_worktree(&format!("workspace={ws}&path={p}")).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (409, Some("dirty_worktree")),
        "{body}"
    );
    assert!(wt.join("scratch.txt").exists());

    let (got, body) = s
        .delete_worktree(&format!("workspace={ws}&path={p}&force=true"))
        .await;
    assert_eq!(got, 204, "{body}");
    assert!(!wt.exists());
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    assert!(
        !repo.git(&["branch", "--list", branch]).trim().is_empty(),
        "branch kept"
    );
    assert_eq!(s.worktrees(&repo.path).await["worktrees"], json!([]));
    let after = s.run(&id).await;
    assert_eq!(after["worktree_cleanup_status"], "cleaned");
    assert!(after["worktree_cleaned_at"].is_string());

    // A running run's worktree: the run is cancelled first.
    let busy = s.repo("busy", 1, "hang", &[]);
    let rid = s.create(&busy, json!({})).await;
    s.wait_step_in_progress(&rid).await;
    let running = s.run(&rid).await;
    let (ws, p) = (
        enc(&busy.path.to_string_lossy()),
        enc(&path_of(&running).to_string_lossy()),
    );
    let (got, body) = s
        .delete_worktree(&format!("workspace={ws}&path={p}&force=true"))
        .await;
    assert_eq!(got, 204, "{body}");
    s.wait_status(&rid, "CANCELED").await;
    assert!(!path_of(&running).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_nobody_reviews_is_removed_after_worktree_keep_days() {
    let s = Single::start("worktree-keep", &[]).await;
    // 0.00004 days: about 3.5 s.
    let short = s.repo("short", 1, "tick", &["worktree_keep_days=0.00004"]);
    let forever = s.repo("forever", 1, "tick", &["worktree_keep_days=0"]);
    let a = s.create(&short, json!({})).await;
    let b = s.create(&forever, json!({})).await;
    let ra = s.wait_status(&a, "COMPLETED").await;
    let rb = s.wait_status(&b, "COMPLETED").await;
    assert!(path_of(&ra).exists(), "kept for review at first");
    let listed = s.worktrees(&forever.path).await;
    assert!(listed["worktrees"][0]["remove_after"].is_null(), "{listed}");

    let done = wait_for(
        "the expired worktree to be removed",
        STATE_TIMEOUT,
        || async {
            let r = s.run(&a).await;
            (r["worktree_cleanup_status"] == "expired").then_some(r)
        },
    )
    .await;
    assert!(!path_of(&ra).exists());
    assert!(done["worktree_cleaned_at"].is_string());
    let branch = ra["worktree"]["run_branch"].as_str().expect("branch");
    assert!(
        !short.git(&["branch", "--list", branch]).trim().is_empty(),
        "branch kept"
    );
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["review_status"], "pending");
    // The other one, kept for ever, is still there (the sweep ran past it).
    assert!(path_of(&rb).exists());
    assert_eq!(s.run(&b).await["worktree_cleanup_status"], "deferred");
}
