//! Copies of a run's files where the existing single-host daemon kept them, for the tools
//! that read them there (`loopctl analyze --prompt-only`, `bin/loop-analyze`): the workspace's
//! `<log_dir>/run-<id>/` (default `logs/loop`) and `<global_log_dir>/runs/run-<id>/` (default
//! the daemon's data directory), as the run's `artifact_mode` says (`mirror`: both). The
//! artifact store stays the record; these copies are best effort. Only a single host makes
//! them (a controller's workspaces are not its own). Called by the lease owner's artifact
//! writes and the scheduler's finisher.

use crate::domain::run_config::RunConfig;
use crate::domain::ArtifactMode;
use std::path::{Path, PathBuf};

/// Where copies go; disabled outside the single role.
#[derive(Debug, Clone, Default)]
pub struct RunLogs {
    /// The default global log directory; `None`: no copies at all.
    global_default: Option<PathBuf>,
}

impl RunLogs {
    /// No copies (controllers).
    pub fn disabled() -> Self {
        RunLogs::default()
    }

    /// Copies, with `data_dir` as the default global log directory (a single host).
    pub fn at(data_dir: &Path) -> Self {
        RunLogs {
            global_default: Some(data_dir.to_path_buf()),
        }
    }

    /// Whether copies are made at all.
    pub fn enabled(&self) -> bool {
        self.global_default.is_some()
    }

    /// The directories a file of the run goes to: the workspace's when the workspace is a
    /// directory here, the global one, or both, as `artifact_mode` says.
    pub fn dirs(&self, workspace_root: &str, run_id: &str, config: &RunConfig) -> Vec<PathBuf> {
        let Some(default) = &self.global_default else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        if config.artifact_mode != ArtifactMode::Global && Path::new(workspace_root).is_dir() {
            dirs.push(config.run_log_dir(workspace_root, run_id));
        }
        if config.artifact_mode != ArtifactMode::Workspace {
            let root = config
                .global_log_dir
                .as_deref()
                .map(PathBuf::from)
                .unwrap_or_else(|| default.clone());
            dirs.push(root.join("runs").join(format!("run-{run_id}")));
        }
        dirs
    }

    /// Writes `bytes` as `name` (a checked artifact name) into each of `dirs`, replacing
    /// what was there; a failure is logged, never returned. Blocking.
    pub fn write(dirs: &[PathBuf], name: &str, bytes: &[u8]) {
        // Checkpoint bundles are the store's business, not the log directory's.
        if name.ends_with(".bundle") || super::validate_name(name).is_err() {
            return;
        }
        for dir in dirs {
            let path = dir.join(name);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, bytes));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the run's log copy");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kv: &str) -> RunConfig {
        let mut c = RunConfig::default();
        c.apply_kv_text(kv).expect("config");
        c
    }

    #[test]
    fn the_mode_chooses_the_workspace_the_global_directory_or_both() {
        let ws = std::env::temp_dir();
        let ws = ws.to_string_lossy();
        let logs = RunLogs::at(Path::new("/data"));
        let run = |kv: &str| logs.dirs(&ws, "r1", &config(kv));
        let local = Path::new(&*ws).join("logs/loop/run-r1");
        let global = PathBuf::from("/data/runs/run-r1");
        assert_eq!(run(""), [local.clone(), global.clone()]);
        assert_eq!(run("artifact_mode=workspace"), [local]);
        assert_eq!(run("artifact_mode=global"), [global]);
        assert_eq!(
            run("artifact_mode=workspace\nlog_dir=out/logs"),
            [Path::new(&*ws).join("out/logs/run-r1")]
        );
        assert_eq!(
            run("artifact_mode=global\nglobal_log_dir=/g"),
            [PathBuf::from("/g/runs/run-r1")]
        );
        assert!(RunLogs::disabled().dirs(&ws, "r1", &config("")).is_empty());
        assert_eq!(
            logs.dirs("/no/such/workspace", "r1", &config("")),
            [PathBuf::from("/data/runs/run-r1")],
            "a git run's label is no directory"
        );
    }
}
