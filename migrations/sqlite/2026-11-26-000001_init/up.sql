-- loopd schema (SQLite). Times are milliseconds since the epoch (BIGINT) on both backends,
-- so one schema.rs serves both; lease times come from the database clock.

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_source TEXT NOT NULL,
    status TEXT NOT NULL,
    workspace_root TEXT NOT NULL,
    spec_path TEXT NOT NULL,
    plan_path TEXT,
    worktree_json TEXT,
    worktree_cleanup_status TEXT,
    worktree_cleaned_at BIGINT,
    config_json TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    review_status TEXT NOT NULL,
    review_action_at BIGINT,
    pr_url TEXT,
    merge_commit TEXT,
    workspace_source TEXT NOT NULL,
    repo_url TEXT,
    repo_ref TEXT,
    artifact_store TEXT NOT NULL,
    labels TEXT NOT NULL,
    waiting_reason TEXT,
    failure_reason TEXT,
    started_at BIGINT,
    ended_at BIGINT
);
CREATE INDEX runs_status_created ON runs (status, created_at);
CREATE INDEX runs_workspace_status ON runs (workspace_root, status);

-- The scheduler's private progress of a run: counters that must survive a restart, the
-- watchdog's pending rewrite, the newest git checkpoint, and the per-run event counter
-- (locked while an event is appended, apart from the runs row that the API reads).
CREATE TABLE run_state (
    run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    iterations_done INTEGER NOT NULL DEFAULT 0,
    verify_failures INTEGER NOT NULL DEFAULT 0,
    review_failures INTEGER NOT NULL DEFAULT 0,
    watchdog_rewrites INTEGER NOT NULL DEFAULT 0,
    pending_prompt TEXT,
    runner_notes TEXT,
    last_worker_id TEXT,
    checkpoint_name TEXT,
    checkpoint_head TEXT,
    finishing TEXT,
    event_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE steps (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    infra_attempts INTEGER NOT NULL DEFAULT 0,
    is_final BOOLEAN NOT NULL DEFAULT 0,
    settled BOOLEAN NOT NULL DEFAULT 0,
    queued_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    exit_code INTEGER,
    prompt TEXT,
    prompt_path TEXT,
    output_path TEXT,
    output_tail TEXT,
    runner_notes TEXT,
    output_size BIGINT NOT NULL DEFAULT 0,
    completion_detected BOOLEAN,
    worker_id TEXT,
    lease_epoch BIGINT NOT NULL DEFAULT 0,
    required_labels TEXT NOT NULL DEFAULT '',
    preferred_worker_id TEXT,
    failure_reason TEXT,
    completion_digest TEXT,
    UNIQUE (run_id, seq)
);
CREATE INDEX steps_status_queued ON steps (status, queued_at);
CREATE INDEX steps_run_status ON steps (run_id, status);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    run_id TEXT,
    run_seq BIGINT,
    step_id TEXT,
    event_type TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (run_id, run_seq)
);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    store TEXT NOT NULL,
    object_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (run_id, name)
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    instance_id TEXT,
    labels TEXT NOT NULL,
    slots INTEGER NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_heartbeat_at BIGINT NOT NULL,
    metrics_json TEXT
);
CREATE INDEX workers_status_heartbeat ON workers (status, last_heartbeat_at);

CREATE TABLE leases (
    step_id TEXT PRIMARY KEY REFERENCES steps (id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    granted_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempt INTEGER NOT NULL
);
CREATE INDEX leases_expires ON leases (expires_at);
CREATE INDEX leases_worker ON leases (worker_id);
