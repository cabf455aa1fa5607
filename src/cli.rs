//! Command-line definitions: the daemon flags (`loopd --role …`) and the client verbs
//! (`loopd run|list|inspect|tail|pause|resume|cancel|retry|workers|artifacts|health`, and the
//! review verbs `diff|merge|scrap|pr|reset|worktrees|worktree-rm|analyze`).

use crate::settings::{Overrides, Role};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// loopd runs AI coding-agent loops: on one machine (`--role single`), or as a controller with
/// a pool of workers. Without a verb it runs the daemon; with a verb it is the client.
#[derive(Debug, Parser)]
#[command(name = "loopd", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags of the daemon; each overrides the config file and the environment.
#[derive(Debug, Args, Clone, Default)]
pub struct DaemonArgs {
    /// Which subsystems run: `single` (one host, SQLite), `controller` (Postgres, HTTP API for
    /// workers) or `worker` (executes steps claimed from a controller). Default: single.
    #[arg(long, value_enum, global = false)]
    pub role: Option<Role>,
    /// Settings file (TOML). Env LOOPD_CONFIG also names one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7700; other interfaces need an explicit bind).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Where the SQLite file, artifacts (fs store), live output and clones are kept
    /// (default $XDG_DATA_HOME/loopd or ~/.local/share/loopd).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Worker: the controller's URL, e.g. http://controller:7700, or several separated by
    /// commas (active-active controllers on one database).
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// Worker: the join token the controller expects (env LOOPD_WORKER_JOIN_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// Worker (and single): how many steps run at once.
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// Worker: labels this worker offers, comma-separated (runs may require labels).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
}

impl DaemonArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            role: self.role,
            config: self.config.clone(),
            bind: self.bind.clone(),
            data_dir: self.data_dir.clone(),
            controller: self.controller.clone(),
            join_token: self.join_token.clone(),
            slots: self.slots,
            labels: self.labels.clone(),
        }
    }
}

/// Options every client verb takes.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Daemon address, or several controllers' separated by commas (the first that answers
    /// is used).
    #[arg(long, env = "LOOPD_ADDR", default_value = "http://127.0.0.1:7700")]
    pub addr: String,
    /// Client token (sent as `Authorization: Bearer …`).
    #[arg(long, env = "LOOPD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Client verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a run: `loopd run SPEC [PLAN]` (`--git`: a git run of this clone's origin).
    Run(Box<RunArgs>),
    /// List runs (newest first).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only runs with this status (PENDING, RUNNING, PAUSED, COMPLETED, FAILED, CANCELED).
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this workspace (the git top level of DIR; without DIR, of the current
        /// directory, like the old `loopctl list --workspace`). Other values (git-run labels)
        /// are matched as given.
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = ".")]
        workspace: Option<String>,
    },
    /// Show a run and its steps.
    Inspect {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Print a run's live output until it ends.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Follow the output (the default; kept for compatibility).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start at this position of the run's output (UTF-16 units; bytes for ASCII).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Pause a run after its current step.
    Pause {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Resume a paused run.
    Resume {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Cancel a run (its running step is killed).
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Queue a failed run again.
    Retry {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// List the workers of a controller.
    Workers {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a run's artifacts, or download one (`--get NAME [-o FILE]`).
    Artifacts {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Download this artifact.
        #[arg(long, value_name = "NAME")]
        get: Option<String>,
        /// Write the download here instead of stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show a completed run's changes from its base branch: commits and files (`--patch`: the
    /// patches too).
    Diff {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Print each changed file's patch after the tables.
        #[arg(long)]
        patch: bool,
    },
    /// Merge a completed run's branch into its merge target (else its base branch), then
    /// remove its worktree.
    Merge {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// `squash` (one commit; the default) or `merge` (fast-forward when it can).
        #[arg(long, value_parser = ["squash", "merge"])]
        strategy: Option<String>,
    },
    /// Throw a completed or failed run's work away: its worktree and run branch are removed.
    Scrap {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Open a pull request of a completed run's branch with `gh` (on the daemon's host).
    Pr {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// Default: the run's name.
        #[arg(long)]
        title: Option<String>,
        /// Default: `Created by loopd run <id>`.
        #[arg(long)]
        body: Option<String>,
    },
    /// Cancel a run if it is still going, then remove its worktree and run branch.
    Reset {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// List a workspace's run worktrees, their runs, and why each is kept.
    Worktrees {
        #[command(flatten)]
        client: ClientArgs,
        /// The workspace (default: the git top level of the current directory).
        #[arg(value_name = "WS", conflicts_with = "workspace_flag")]
        workspace: Option<String>,
        /// The same as WS.
        #[arg(long = "workspace", value_name = "WS")]
        workspace_flag: Option<String>,
    },
    /// Remove one worktree of a workspace (its run, if still going, is cancelled first; its
    /// branch stays).
    #[command(name = "worktree-rm")]
    WorktreeRm {
        #[command(flatten)]
        client: ClientArgs,
        /// The worktree's directory.
        path: String,
        /// The workspace it belongs to (default: the git top level of the current directory).
        #[arg(long, value_name = "WS")]
        workspace: Option<String>,
        /// Remove it even with uncommitted changes.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Analyse an ended run (postmortem): three agent steps write spec-compliance.md,
    /// run-quality.md and summary.md under `<ws>/logs/loop/run-<id>/analysis/`.
    Analyze {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
        /// The model the analyses use (default: the run's).
        #[arg(long)]
        model: Option<String>,
        /// Only write the prompts and the git snapshot; run nothing.
        #[arg(long)]
        prompt_only: bool,
    },
    /// Exit 0 when the daemon answers `GET /ready` with 200; else one error line and exit 1.
    /// One request, no retries (for container healthchecks and scripts that poll). Several
    /// addresses (comma-separated): each is asked and reported; exit 0 when all are ready.
    Health {
        /// Daemon address (a worker's is its --bind, e.g. http://127.0.0.1:7701), or several.
        #[arg(long, env = "LOOPD_ADDR", default_value = "http://127.0.0.1:7700")]
        addr: String,
    },
}

/// `loopd run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The spec file (for git runs: its path inside the repository).
    pub spec: String,
    /// The plan file.
    pub plan: Option<String>,
    /// Workspace root (default: the git top level of the current directory).
    #[arg(long)]
    pub workspace: Option<String>,
    /// A local key=value (or JSON) file, or an inline JSON object, overriding
    /// `.loop/config`; the file's contents are sent (commands and paths need an `exec` token).
    #[arg(long)]
    pub config: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    /// `spec_slug` or `haiku`.
    #[arg(long)]
    pub name_source: Option<String>,
    #[arg(long)]
    pub base_branch: Option<String>,
    #[arg(long)]
    pub run_branch_prefix: Option<String>,
    /// Merge the run branch into this branch on completion.
    #[arg(long)]
    pub merge_target: Option<String>,
    /// `none`, `merge` or `squash`.
    #[arg(long)]
    pub merge_strategy: Option<String>,
    #[arg(long)]
    pub worktree_path_template: Option<String>,
    /// Git run of this clone's `origin` at the current branch (which must be pushed); SPEC
    /// and PLAN are paths in the repository.
    #[arg(long, conflicts_with_all = ["repo_url", "repo_ref"])]
    pub git: bool,
    /// Run in a clone of this repository on a worker (git mode) instead of a shared path.
    #[arg(long)]
    pub repo_url: Option<String>,
    /// Branch, tag or commit of `--repo-url` (default: its HEAD).
    #[arg(long)]
    pub repo_ref: Option<String>,
    /// Labels a worker must have, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
}
