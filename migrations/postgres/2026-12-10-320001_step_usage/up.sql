-- What each agent step reported it spent (its final `result` event), by step; a run's usage
-- is the sum of its steps'. `model` is the step's model as the run's config names it.
CREATE TABLE step_usage (
    step_id TEXT PRIMARY KEY REFERENCES steps (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    total_cost_usd DOUBLE PRECISION NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_creation_input_tokens BIGINT NOT NULL,
    cache_read_input_tokens BIGINT NOT NULL,
    num_turns BIGINT NOT NULL,
    duration_api_ms BIGINT NOT NULL,
    is_error BOOLEAN NOT NULL,
    subtype TEXT,
    session_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX step_usage_by_run ON step_usage (run_id);
CREATE INDEX step_usage_by_time ON step_usage (created_at);
