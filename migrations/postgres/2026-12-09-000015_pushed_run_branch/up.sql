-- A completed git run's branch as it was pushed to the run's remote (git.push_run_branch).
ALTER TABLE runs ADD COLUMN pushed_branch TEXT;
ALTER TABLE runs ADD COLUMN pushed_commit TEXT;
