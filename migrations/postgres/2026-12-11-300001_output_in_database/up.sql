-- Live output of the controller role, shared by every controller on the database: the chunks
-- each step's lease holders posted, in byte order, and each step's totals. `unit_at` is where
-- a chunk starts in the step's output in UTF-16 code units (the runs API's positions), so a
-- reader finds a position without counting from the start.
CREATE TABLE output_chunks (
    step_id TEXT NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    byte_at BIGINT NOT NULL,
    unit_at BIGINT NOT NULL,
    content BYTEA NOT NULL,
    PRIMARY KEY (step_id, byte_at)
);
CREATE INDEX output_chunks_by_unit ON output_chunks (step_id, unit_at);

CREATE TABLE output_heads (
    step_id TEXT PRIMARY KEY REFERENCES steps (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    units BIGINT NOT NULL
);
CREATE INDEX output_heads_by_run ON output_heads (run_id);
