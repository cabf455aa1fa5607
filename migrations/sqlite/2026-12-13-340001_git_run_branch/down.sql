ALTER TABLE runs DROP COLUMN run_branch;
