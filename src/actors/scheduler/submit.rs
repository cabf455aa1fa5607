//! Validation of `POST /runs`: resolves the workspace, spec and plan (on disk for shared_fs
//! runs, in a cached mirror at the requested ref for git runs), layers the run config
//! (defaults < `.loop/config` < `config_override` < request fields) and produces the row to
//! insert. Blocking (files, git2): the scheduler calls it on a blocking thread.

use crate::api::{ConfigOverride, CreateRunRequest};
use crate::db::models::{encode_labels, new_id, RunRow};
use crate::domain::run_config::RunConfig;
use crate::domain::{NameSource, ReviewStatus, RunStatus, StoreKind, WorkspaceSource};
use crate::workspace::mirror::Mirrors;
use crate::workspace::naming::slug;
use std::path::{Component, Path, PathBuf};

/// A refused submission, in words the user can act on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubmitError(pub String);

fn bad(msg: impl Into<String>) -> SubmitError {
    SubmitError(msg.into())
}

/// A label is short and plain.
fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 64
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Resolves `path` against `root` and requires the result to be an existing file inside it.
fn file_inside(root: &Path, path: &str, what: &str) -> Result<PathBuf, SubmitError> {
    if path.trim().is_empty() {
        return Err(bad(format!("{what} must not be empty")));
    }
    let joined = root.join(path);
    let real = joined
        .canonicalize()
        .map_err(|_| bad(format!("{what} not found: {}", joined.display())))?;
    if !real.starts_with(root) {
        return Err(bad(format!(
            "{what} must be inside workspace_root ({}): {path}",
            root.display()
        )));
    }
    if !real.is_file() {
        return Err(bad(format!("{what} is not a file: {}", real.display())));
    }
    Ok(real)
}

/// A repository-relative path: no root, no `..`.
fn repo_relative(path: &str, what: &str) -> Result<String, SubmitError> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(bad(format!(
            "{what} must be a path relative to the repository root without '..': {path}"
        )));
    }
    Ok(p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect::<Vec<_>>()
        .join("/"))
}

/// Applies `config_override`: a JSON object (as an object or a string), or a key=value file.
fn apply_override(config: &mut RunConfig, o: &ConfigOverride) -> Result<(), SubmitError> {
    let warn = |w: Vec<String>| {
        w.iter()
            .for_each(|m| tracing::warn!("config_override: {m}"))
    };
    match o {
        ConfigOverride::Object(map) => {
            warn(config.apply_json(map).map_err(|e| bad(e.to_string()))?)
        }
        ConfigOverride::Text(t) if t.trim_start().starts_with('{') => {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(t)
                .map_err(|e| bad(format!("config_override is not a JSON object: {e}")))?;
            warn(config.apply_json(&map).map_err(|e| bad(e.to_string()))?)
        }
        ConfigOverride::Text(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("cannot read config_override file {path}: {e}")))?;
            warn(
                config
                    .apply_kv_text(&text)
                    .map_err(|e| bad(e.to_string()))?,
            )
        }
    }
    Ok(())
}

/// Request fields override the config.
fn apply_request_fields(config: &mut RunConfig, req: &CreateRunRequest) {
    if let Some(b) = &req.base_branch {
        config.base_branch = Some(b.clone());
    }
    if let Some(p) = &req.run_branch_prefix {
        config.run_branch_prefix = p.clone();
    }
    if let Some(t) = &req.merge_target_branch {
        config.merge_target_branch = Some(t.clone()).filter(|t| !t.is_empty());
    }
    if let Some(s) = req.merge_strategy {
        config.merge_strategy = s;
    }
    if let Some(t) = &req.worktree_path_template {
        config.worktree_path_template = t.clone();
    }
}

/// The run's name: given, or derived from the spec file name.
fn run_name(req: &CreateRunRequest, spec: &str) -> (String, NameSource) {
    let source = req.name_source.unwrap_or(NameSource::SpecSlug);
    if let Some(n) = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        return (n.to_string(), source);
    }
    let stem = Path::new(spec)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    match source {
        NameSource::SpecSlug => (slug(&stem), source),
        NameSource::Haiku => (haiku_name(), source),
    }
}

/// A short memorable name (the old daemon asked a model for a haiku-style name).
fn haiku_name() -> String {
    use rand::seq::SliceRandom;
    const ADJ: &[&str] = &[
        "quiet", "amber", "silver", "misty", "bright", "autumn", "hidden", "gentle",
    ];
    const NOUN: &[&str] = &[
        "river", "pine", "meadow", "harbor", "lantern", "cedar", "brook", "summit",
    ];
    let mut rng = rand::thread_rng();
    format!(
        "{}-{}-{:04x}",
        ADJ.choose(&mut rng).unwrap_or(&"quiet"),
        NOUN.choose(&mut rng).unwrap_or(&"river"),
        rand::random::<u16>()
    )
}

/// No text field may hold a NUL byte (no file name or git ref can, and databases refuse it).
fn reject_nul(req: &CreateRunRequest) -> Result<(), SubmitError> {
    let fields = [
        Some(&req.spec_path),
        Some(&req.workspace_root),
        req.plan_path.as_ref(),
        req.name.as_ref(),
        req.base_branch.as_ref(),
        req.run_branch_prefix.as_ref(),
        req.merge_target_branch.as_ref(),
        req.worktree_path_template.as_ref(),
        req.repo_url.as_ref(),
        req.repo_ref.as_ref(),
    ];
    if fields.iter().flatten().any(|f| f.contains('\0')) {
        return Err(bad("text fields must not contain NUL bytes"));
    }
    Ok(())
}

/// A validated submission: the row to insert and, for a git run, the branches of its remote
/// (as its mirror knows them after the fetch) that its run branch must not be.
pub struct Prepared {
    pub row: RunRow,
    pub on_remote: Vec<String>,
}

/// Validates a submission and builds the run row (status PENDING).
pub fn prepare(
    req: &CreateRunRequest,
    mirrors: &Mirrors,
    store: StoreKind,
    now: i64,
) -> Result<Prepared, SubmitError> {
    reject_nul(req)?;
    let source = req.workspace_source.unwrap_or(if req.repo_url.is_some() {
        WorkspaceSource::Git
    } else {
        WorkspaceSource::SharedFs
    });
    let labels = req.labels.clone().unwrap_or_default();
    if let Some(l) = labels.iter().find(|l| !valid_label(l)) {
        return Err(bad(format!(
            "invalid label '{l}': use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    if req.workspace_root.trim().is_empty() {
        return Err(bad("workspace_root must not be empty"));
    }
    let mut config = RunConfig::default();
    let resolved = match source {
        WorkspaceSource::SharedFs => shared_fs(req, &mut config)?,
        WorkspaceSource::Git => git(req, mirrors, &mut config)?,
    };
    if let Some(o) = &req.config_override {
        apply_override(&mut config, o)?;
    }
    apply_request_fields(&mut config, req);
    config.agent_argv().map_err(|e| bad(e.to_string()))?;
    let (name, name_source) = run_name(req, &resolved.spec);
    let config_json = serde_json::to_string(&config).map_err(|e| bad(e.to_string()))?;
    let row = RunRow {
        id: new_id(),
        name,
        name_source: name_source.as_str().into(),
        status: RunStatus::Pending.as_str().into(),
        workspace_root: resolved.root,
        spec_path: resolved.spec,
        plan_path: resolved.plan,
        worktree_json: None,
        worktree_cleanup_status: None,
        worktree_cleaned_at: None,
        config_json: Some(config_json),
        created_at: now,
        updated_at: now,
        review_status: ReviewStatus::Pending.as_str().into(),
        review_action_at: None,
        pr_url: None,
        merge_commit: None,
        workspace_source: source.as_str().into(),
        repo_url: resolved.repo_url,
        repo_ref: resolved.repo_ref,
        artifact_store: store.as_str().into(),
        labels: encode_labels(&labels),
        waiting_reason: None,
        failure_reason: None,
        started_at: None,
        ended_at: None,
        pushed_branch: None,
        pushed_commit: None,
        run_branch: None,
    };
    // The run branch itself is chosen in the transaction that inserts the run (`branch.rs`),
    // among the branches this fetch did not see on the remote.
    let on_remote = match &row.repo_url {
        Some(url) if source == WorkspaceSource::Git => mirrors
            .branches_starting_with(url, &row.named_git_branch(&config))
            .map_err(|e| bad(e.to_string()))?,
        _ => Vec::new(),
    };
    Ok(Prepared { row, on_remote })
}

struct Resolved {
    root: String,
    spec: String,
    plan: Option<String>,
    repo_url: Option<String>,
    repo_ref: Option<String>,
}

fn shared_fs(req: &CreateRunRequest, config: &mut RunConfig) -> Result<Resolved, SubmitError> {
    let root = Path::new(&req.workspace_root)
        .canonicalize()
        .map_err(|_| bad(format!("workspace_root not found: {}", req.workspace_root)))?;
    if !root.is_dir() {
        return Err(bad(format!(
            "workspace_root is not a directory: {}",
            root.display()
        )));
    }
    if git2::Repository::open(&root).is_err() {
        return Err(bad(format!(
            "workspace_root is not a git repository: {}",
            root.display()
        )));
    }
    let spec = file_inside(&root, &req.spec_path, "spec_path")?;
    let plan = match req.plan_path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(file_inside(&root, p, "plan_path")?),
        None => None,
    };
    let loop_config = root.join(".loop/config");
    if loop_config.is_file() {
        let text = std::fs::read_to_string(&loop_config)
            .map_err(|e| bad(format!("cannot read {}: {e}", loop_config.display())))?;
        for w in config
            .apply_kv_text(&text)
            .map_err(|e| bad(format!("{}: {e}", loop_config.display())))?
        {
            tracing::warn!("{}: {w}", loop_config.display());
        }
    }
    let s = |p: PathBuf| p.to_string_lossy().to_string();
    Ok(Resolved {
        root: s(root),
        spec: s(spec),
        plan: plan.map(s),
        repo_url: None,
        repo_ref: None,
    })
}

fn git(
    req: &CreateRunRequest,
    mirrors: &Mirrors,
    config: &mut RunConfig,
) -> Result<Resolved, SubmitError> {
    let url = req
        .repo_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| bad("a git run needs repo_url"))?;
    let url = url.trim();
    mirrors.fetch(url).map_err(|e| bad(e.to_string()))?;
    let (name, sha) = mirrors
        .resolve_ref(url, req.repo_ref.as_deref().filter(|r| !r.is_empty()))
        .map_err(|e| bad(e.to_string()))?;
    let at = req.repo_ref.clone().unwrap_or_else(|| "HEAD".into());
    let exists = |path: &str| -> Result<bool, SubmitError> {
        Ok(mirrors
            .read_file(url, &sha, path)
            .map_err(|e| bad(e.to_string()))?
            .is_some())
    };
    let spec = repo_relative(&req.spec_path, "spec_path")?;
    if !exists(&spec)? {
        return Err(bad(format!("spec not found at {at}: {spec}")));
    }
    let plan = match req.plan_path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = repo_relative(p, "plan_path")?;
            if !exists(&p)? {
                return Err(bad(format!("plan not found at {at}: {p}")));
            }
            Some(p)
        }
        None => None,
    };
    if let Some(bytes) = mirrors
        .read_file(url, &sha, ".loop/config")
        .map_err(|e| bad(e.to_string()))?
    {
        let text = String::from_utf8_lossy(&bytes);
        for w in config
            .apply_kv_text(&text)
            .map_err(|e| bad(format!(".loop/config: {e}")))?
        {
            tracing::warn!(".loop/config at {at}: {w}");
        }
    }
    // The branch the run started from is the one its review compares with and merges into
    // (a request's base_branch still wins); none when it started from a tag or a commit.
    if mirrors.is_branch(url, &name) {
        config.base_branch = Some(name);
    }
    Ok(Resolved {
        root: req.workspace_root.trim().to_string(),
        spec,
        plan,
        repo_url: Some(url.to_string()),
        repo_ref: Some(sha),
    })
}
