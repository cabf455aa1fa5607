ALTER TABLE runs DROP COLUMN pushed_commit;
ALTER TABLE runs DROP COLUMN pushed_branch;
