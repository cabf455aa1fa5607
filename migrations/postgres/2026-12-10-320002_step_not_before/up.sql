-- A step handed back because the agent API pushed back (rate limit, overload, usage limit)
-- is not claimed before this time (ms since the epoch).
ALTER TABLE steps ADD COLUMN not_before BIGINT;
