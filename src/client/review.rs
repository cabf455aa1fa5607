//! The review verbs (docs/review.md): `loopd diff|merge|scrap|pr|reset ID` over the review
//! routes of a run, and `loopd worktrees [WS]` / `loopd worktree-rm PATH` over a workspace's
//! worktrees, and `loopd analyze ID` (the postmortem). Tables for people, the daemon's JSON with `--json`; a refusal is the daemon's
//! message on one `error:` line.

use super::submit::workspace_filter;
use super::{enc, render, ClientError, Daemon, Result};
use crate::api::{CreatePrResponse, MergeResponse, RunDiff, WorktreesEnvelope};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;

/// `loopd diff ID [--patch]`.
pub async fn diff(d: &Daemon, id: &str, patch: bool) -> Result<()> {
    let (diff, raw): (RunDiff, _) = d
        .get_json(&format!("/runs/{}/diff", enc(id)), "run")
        .await?;
    render::print(d.json, &raw, || render::diff(&diff, patch));
    Ok(())
}

/// POSTs `verb` for run `id` with an optional JSON body; the answer's JSON (null for 204).
async fn post(d: &Daemon, id: &str, verb: &str, body: Option<Value>) -> Result<Value> {
    let mut req = d.request(Method::POST, &format!("/runs/{}/{verb}", enc(id)));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = d.send(req, "run").await?;
    if resp.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    resp.json()
        .await
        .map_err(|e| ClientError(format!("invalid response: {e}")))
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| ClientError(format!("invalid response: {e}")))
}

/// `loopd merge ID [--strategy squash|merge]`.
pub async fn merge(d: &Daemon, id: &str, strategy: Option<String>) -> Result<()> {
    let body = strategy.map(|s| json!({ "strategy": s }));
    let raw = post(d, id, "merge", body).await?;
    let m: MergeResponse = typed(&raw)?;
    render::print(d.json, &raw, || format!("Run {id} merged: {}\n", m.commit));
    Ok(())
}

/// `loopd pr ID [--title T] [--body B]`.
pub async fn pr(d: &Daemon, id: &str, title: Option<String>, body: Option<String>) -> Result<()> {
    let mut b = serde_json::Map::new();
    if let Some(t) = title {
        b.insert("title".into(), t.into());
    }
    if let Some(t) = body {
        b.insert("body".into(), t.into());
    }
    let raw = post(d, id, "create-pr", Some(Value::Object(b))).await?;
    let p: CreatePrResponse = typed(&raw)?;
    render::print(d.json, &raw, || {
        format!("Pull request created: {}\n", p.url)
    });
    Ok(())
}

/// `loopd analyze ID [--model M] [--prompt-only]`: the postmortem, then where its files are.
pub async fn analyze(d: &Daemon, id: &str, model: Option<String>, prompt_only: bool) -> Result<()> {
    let mut b = serde_json::Map::new();
    if let Some(m) = model {
        b.insert("model".into(), m.into());
    }
    if prompt_only {
        b.insert("prompt_only".into(), true.into());
    }
    let raw = post(d, id, "postmortem", Some(Value::Object(b))).await?;
    render::print(d.json, &raw, || render::postmortem(id, &raw));
    if !prompt_only && raw["status"] != "ok" {
        return Err(ClientError(format!(
            "postmortem of run {id} failed (status {})",
            raw["status"]
        )));
    }
    Ok(())
}

/// `loopd scrap ID` and `loopd reset ID` (204 answers).
pub async fn action(d: &Daemon, id: &str, verb: &str, done: &str) -> Result<()> {
    post(d, id, verb, None).await?;
    let raw = json!({"id": id, "action": verb, "ok": true});
    render::print(d.json, &raw, || format!("Run {id} {done}\n"));
    Ok(())
}

/// The workspace a worktree verb means: `ws` (a directory: its git top level), else the
/// current directory's.
fn workspace(ws: Option<String>) -> String {
    workspace_filter(ws.as_deref().unwrap_or("."))
}

/// `loopd worktrees [WS]`.
pub async fn worktrees(d: &Daemon, ws: Option<String>) -> Result<()> {
    let path = format!("/worktrees?workspace={}", enc(&workspace(ws)));
    let (list, raw): (WorktreesEnvelope, _) = d.get_json(&path, "workspace").await?;
    render::print(d.json, &raw, || render::worktrees(&list));
    Ok(())
}

/// `loopd worktree-rm PATH [--workspace WS] [-f]`.
pub async fn worktree_rm(d: &Daemon, path: &str, ws: Option<String>, force: bool) -> Result<()> {
    let abs = Path::new(path)
        .canonicalize()
        .or_else(|_| std::env::current_dir().map(|c| c.join(path)))
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_else(|_| path.to_string());
    let q = format!(
        "/worktrees?workspace={}&path={}&force={force}",
        enc(&workspace(ws)),
        enc(&abs)
    );
    d.send(d.request(Method::DELETE, &q), "workspace").await?;
    let raw = json!({"path": abs, "action": "worktree-rm", "ok": true});
    render::print(d.json, &raw, || format!("Worktree {abs} removed\n"));
    Ok(())
}
