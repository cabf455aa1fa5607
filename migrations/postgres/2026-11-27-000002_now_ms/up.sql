-- The database clock in milliseconds since the epoch, for lease times. A function rather than
-- an expression so that statements using it stay prepared (SQLite: registered per connection).
CREATE FUNCTION loopd_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE
AS $$ SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint $$;
