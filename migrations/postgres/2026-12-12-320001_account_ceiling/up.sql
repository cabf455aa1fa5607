-- The limit at which an agent account was last refused for its rate (429): the limit grows
-- back to just below it after `recover_after` completions a step, as before, but to reach it
-- again takes `recover_after` completions per slot (a rare probe of a level known to be too
-- high, instead of one refused call every few completions). NULL: none known, or the probe
-- at it succeeded.
ALTER TABLE api_accounts ADD COLUMN ceiling INTEGER;
