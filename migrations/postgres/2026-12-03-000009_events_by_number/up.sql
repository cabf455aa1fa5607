-- Events are read by number (a run's, `UNIQUE (run_id, run_seq)`) or by time (those without a
-- run, `events_global`), never by id: the primary key's index only made every event an index
-- entry more to write (four per cycle of a loop; made alone inside Postgres, the cycle was
-- about a tenth faster without them). Ids stay as they were: UUIDv7s the controller makes,
-- unique by construction, still returned with every event.
ALTER TABLE events DROP CONSTRAINT events_pkey;
