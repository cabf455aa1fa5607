-- The agent account a step's agent uses (its model and agent command, see
-- `domain::api_limit::account_key`); NULL for steps that run no agent, and for every step
-- while `[api_limits]` is off. Claims count an account's steps in flight by this index.
ALTER TABLE steps ADD COLUMN account TEXT;
CREATE INDEX steps_account_in_flight ON steps (account)
    WHERE status = 'IN_PROGRESS' AND account IS NOT NULL;
-- Each agent account's adaptive concurrency limit (AIMD) and usage-limit pause, shared by
-- every controller on the database. Times are ms since the epoch.
CREATE TABLE api_accounts (
    account TEXT PRIMARY KEY,
    -- Steps of the account that may run at once (1 ..= max_concurrent).
    concurrency_limit INTEGER NOT NULL,
    max_concurrent INTEGER NOT NULL,
    -- Completions since the limit last changed (it grows by one after `recover_after`).
    successes INTEGER NOT NULL DEFAULT 0,
    -- The last push-back: rate_limited, overloaded or usage_limit, and when.
    last_signal TEXT,
    last_signal_at BIGINT,
    -- When the limit was last halved: a signal from a step granted before then is not
    -- counted again (one halving per wave of push-back).
    decreased_at BIGINT,
    -- No step of the account is dispatched before this (a usage limit's reset time).
    pause_until BIGINT,
    updated_at BIGINT NOT NULL
);
