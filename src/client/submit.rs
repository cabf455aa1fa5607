//! `loopd run`: resolves the workspace and paths like the old loopctl did (or, with `--git`,
//! the clone's origin and pushed current branch), then submits.

use super::{ClientError, Daemon, Result};
use crate::api::{ConfigOverride, CreateRunRequest, RunEnvelope};
use crate::cli::RunArgs;
use reqwest::Method;
use std::path::{Path, PathBuf};

/// The git top level of `dir`, else `dir`.
fn workspace_of(dir: &Path) -> PathBuf {
    git2::Repository::discover(dir)
        .ok()
        .and_then(|r| r.workdir().map(Path::to_path_buf))
        .and_then(|p| p.canonicalize().ok())
        .or_else(|| dir.canonicalize().ok())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// What `list --workspace W` filters on: the workspace root of directory `W` as the daemon
/// stores it (canonical git top level), or `W` as given when it is not a directory (the
/// `workspace_root` label of git runs).
pub fn workspace_filter(w: &str) -> String {
    let dir = Path::new(w);
    if dir.is_dir() {
        workspace_of(dir).to_string_lossy().to_string()
    } else {
        w.to_string()
    }
}

/// A path that exists relative to the current directory is sent absolute; anything else is
/// sent as given and resolved by the daemon against the workspace root.
fn resolve(p: &str, cwd: &Path) -> String {
    let candidate = cwd.join(p);
    match candidate.canonicalize() {
        Ok(abs) if !Path::new(p).is_absolute() => abs.to_string_lossy().to_string(),
        _ => p.to_string(),
    }
}

fn parse_enum<T: std::str::FromStr>(v: &Option<String>, what: &str) -> Result<Option<T>> {
    match v {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ClientError(format!("invalid {what}: {s}"))),
    }
}

/// Largest `--config` file sent (the daemon refuses more than 64 KiB).
const MAX_CONFIG_FILE_BYTES: u64 = 64 << 10;

/// `--config`: an inline JSON object, or a local key=value (or JSON) file whose contents are
/// sent. The daemon reads no file a request names.
fn local_override(c: &str, cwd: &Path) -> Result<ConfigOverride> {
    if c.trim_start().starts_with('{') {
        return Ok(ConfigOverride::Text(c.to_string()));
    }
    let path = cwd.join(c);
    let fail = |why: String| ClientError(format!("cannot read --config {}: {why}", path.display()));
    let meta = std::fs::metadata(&path).map_err(|e| fail(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_CONFIG_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.kind().to_string()))?;
    Ok(ConfigOverride::Text(text))
}

/// What `--git` submits: the clone's origin URL, its current branch, and the repository's
/// work tree (to make SPEC and PLAN repository-relative).
struct Origin {
    url: String,
    branch: String,
    root: PathBuf,
}

/// The origin and pushed current branch of the clone around `cwd`, or why not.
fn origin_of(cwd: &Path) -> Result<Origin> {
    let e = |m: String| ClientError(m);
    let repo = git2::Repository::discover(cwd)
        .map_err(|_| e(format!("--git: {} is not in a git clone", cwd.display())))?;
    let root = repo
        .workdir()
        .and_then(|p| p.canonicalize().ok())
        .ok_or_else(|| e("--git: the repository has no work tree".into()))?;
    let origin = repo
        .find_remote("origin")
        .map_err(|_| e("--git: the clone has no remote named origin".into()))?;
    let url = origin
        .url()
        .ok()
        .map(str::to_string)
        .ok_or_else(|| e("--git: origin's URL is not UTF-8".into()))?;
    if crate::workspace::remote::RemoteUrl::parse(&url).is_err() {
        return Err(e(format!(
            "--git: origin's URL {} is not one loopd accepts (a password in it? use a credential helper)",
            crate::workspace::remote::redact(&url)
        )));
    }
    let head = repo
        .head()
        .map_err(|_| e("--git: the current branch has no commit yet".into()))?;
    let branch = head
        .shorthand()
        .ok()
        .filter(|_| head.is_branch())
        .map(str::to_string)
        .ok_or_else(|| e("--git: HEAD is detached; check out a branch".into()))?;
    let upstream = repo
        .branch_upstream_name(&format!("refs/heads/{branch}"))
        .ok()
        .and_then(|n| n.as_str().ok().map(str::to_string))
        .filter(|n| n.starts_with("refs/remotes/origin/"))
        .ok_or_else(|| {
            e(format!(
                "--git: branch {branch} is not pushed to origin: git push -u origin {branch}"
            ))
        })?;
    let local = head
        .target()
        .ok_or_else(|| e("--git: HEAD has no commit".into()))?;
    let remote = repo
        .refname_to_id(&upstream)
        .map_err(|_| e(format!("--git: {upstream} is missing: git fetch origin")))?;
    let (ahead, _) = repo.graph_ahead_behind(local, remote).map_err(|x| {
        e(format!(
            "--git: cannot compare {branch} with {upstream}: {x}"
        ))
    })?;
    if ahead > 0 {
        return Err(e(format!(
            "--git: branch {branch} has {ahead} unpushed commit(s): git push origin {branch}"
        )));
    }
    Ok(Origin { url, branch, root })
}

/// `p` (relative to `cwd`) as a path relative to the repository root, when it exists there.
fn in_repository(p: &str, cwd: &Path, root: &Path) -> String {
    cwd.join(p)
        .canonicalize()
        .ok()
        .and_then(|abs| abs.strip_prefix(root).ok().map(Path::to_path_buf))
        .map(|rel| rel.to_string_lossy().to_string())
        .unwrap_or_else(|| p.to_string())
}

pub async fn run(d: &Daemon, a: &RunArgs) -> Result<()> {
    let cwd = std::env::current_dir().map_err(|e| ClientError(e.to_string()))?;
    let origin = if a.git { Some(origin_of(&cwd)?) } else { None };
    let repo_url = origin
        .as_ref()
        .map(|o| o.url.clone())
        .or(a.repo_url.clone());
    let repo_ref = origin
        .as_ref()
        .map(|o| o.branch.clone())
        .or(a.repo_ref.clone());
    let git = repo_url.is_some();
    let workspace = match &a.workspace {
        Some(w) => w.clone(),
        None if git => repo_url.clone().unwrap_or_default(),
        None => workspace_of(&cwd).to_string_lossy().to_string(),
    };
    let path = |p: &str| match (&origin, git) {
        (Some(o), _) => in_repository(p, &cwd, &o.root),
        (None, true) => p.to_string(),
        (None, false) => resolve(p, &cwd),
    };
    let config_override = a
        .config
        .as_deref()
        .map(|c| local_override(c, &cwd))
        .transpose()?;
    let req = CreateRunRequest {
        spec_path: path(&a.spec),
        workspace_root: workspace,
        plan_path: a.plan.as_deref().map(path),
        config_override,
        name: a.name.clone(),
        name_source: parse_enum(&a.name_source, "--name-source")?,
        base_branch: a.base_branch.clone(),
        run_branch_prefix: a.run_branch_prefix.clone(),
        merge_target_branch: a.merge_target.clone(),
        merge_strategy: parse_enum(&a.merge_strategy, "--merge-strategy")?,
        worktree_path_template: a.worktree_path_template.clone(),
        workspace_source: git.then_some(crate::domain::WorkspaceSource::Git),
        repo_url,
        repo_ref,
        labels: a.labels.clone(),
    };
    let resp = d
        .send(d.request(Method::POST, "/runs").json(&req), "run")
        .await?;
    let raw: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ClientError(format!("invalid response: {e}")))?;
    let env: RunEnvelope = serde_json::from_value(raw.clone())
        .map_err(|e| ClientError(format!("invalid response: {e}")))?;
    if d.json {
        println!("{}", serde_json::to_string_pretty(&raw).unwrap_or_default());
    } else {
        let r = env.run;
        println!("Run created: {}", r.id);
        println!("  name:   {}", r.name);
        println!("  spec:   {}", r.spec_path);
        println!("  plan:   {}", r.plan_path.as_deref().unwrap_or("-"));
        println!("  status: {}", r.status);
    }
    Ok(())
}
