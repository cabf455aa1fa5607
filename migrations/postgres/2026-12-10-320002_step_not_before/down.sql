ALTER TABLE steps DROP COLUMN not_before;
