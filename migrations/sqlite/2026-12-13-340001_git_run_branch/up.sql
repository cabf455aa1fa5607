-- The branch a git run works on and pushes, decided when it is submitted: run/<name>, or
-- run/<name>-2, -3, … when the remote has that branch already. NULL for older rows (their
-- branch is derived from the name).
ALTER TABLE runs ADD COLUMN run_branch TEXT;
