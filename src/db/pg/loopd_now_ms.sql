-- The database clock in milliseconds since the epoch: every lease time comes from it, never
-- from a worker's clock. A function rather than an expression so that the statements using it
-- stay prepared. SQLite registers a function of the same name on every connection.
-- Called by: every function here that stamps a time; `Conn::now_ms` and the lease queries
-- (src/db/mod.rs, src/db/leases.rs).
-- History: migration 2026-11-27-000002_now_ms.
CREATE OR REPLACE FUNCTION loopd_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE
AS $$ SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint $$;
