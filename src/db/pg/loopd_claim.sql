-- Claims the oldest claimable step a worker may run (as `leases::claim` does on SQLite), grants
-- its lease (the step's lease columns) and records LEASE_GRANTED and STEP_STARTED (ids given by
-- the caller), in one statement. Returns {"closed": true} for a draining or revoked worker (and
-- for an unknown one when nothing matched), {"closed": false} when nothing matched, else
-- {"step", "lease", "run", "state", "now", "run_version", "state_version", "inputs"}: the
-- versions are the rows' `xmin`, which a completion's write later compares.
-- Called by: `fast::claim` (src/db/fast.rs), loopd_complete_and_claim.
-- A step of an agent account (`steps.account`) is taken only while the account has fewer steps
-- in flight than its limit and is not paused (`api_accounts`; no row: no limit yet).
-- History: migrations 2026-11-28-000003_fast_paths, 2026-12-06-000012_leases_in_steps,
-- 2026-12-07-000013_versions_not_rows, 2026-12-10-323001_api_accounts.
CREATE OR REPLACE FUNCTION loopd_claim(p_worker TEXT, p_allowed TEXT[], p_ttl BIGINT, p_window BIGINT,
                            p_event_ids TEXT[], p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
-- Planned once per connection: a fresh plan on every call cost more than the work itself.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now BIGINT := loopd_now_ms();
    v_id TEXT;
    v_account TEXT;
    v_blocked TEXT[];
    v_step steps;
    v_state JSONB;
    v_state_seq BIGINT;
    v_run JSONB;
    v_run_version BIGINT;
    v_state_version BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM workers w
               WHERE w.id = p_worker AND w.status IN ('draining', 'revoked')) THEN
        RETURN jsonb_build_object('closed', true);
    END IF;
    -- Agent accounts at their limit or paused (`api_accounts`): none of their steps is taken.
    v_blocked := ARRAY(SELECT a.account FROM api_accounts a
                        WHERE a.pause_until > v_now
                           OR a.concurrency_limit <= loopd_account_in_flight(a.account));
    LOOP
        -- A step waiting for this very worker first (taking another run's step instead would
        -- leave its own waiting a whole window), then the oldest that waits for no one; both
        -- walk the claimable steps' own indexes in order and stop at the first they can lock.
        SELECT s.id, s.account INTO v_id, v_account FROM steps s
         WHERE s.preferred_worker_id = p_worker AND s.status IN ('QUEUED', 'RETRYING')
           AND s.required_labels = ANY (p_allowed)
           AND (s.not_before IS NULL OR s.not_before <= v_now)
           AND (s.account IS NULL OR s.account <> ALL (v_blocked))
           AND (s.phase = 'postmortem'
                OR EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING'))
         ORDER BY s.queued_at, s.id
         LIMIT 1
         FOR UPDATE OF s SKIP LOCKED;
        IF v_id IS NULL THEN
            SELECT s.id, s.account INTO v_id, v_account FROM steps s
             WHERE s.status IN ('QUEUED', 'RETRYING')
               AND s.required_labels = ANY (p_allowed)
               AND (s.not_before IS NULL OR s.not_before <= v_now)
               AND (s.account IS NULL OR s.account <> ALL (v_blocked))
               AND (s.preferred_worker_id IS NULL OR s.queued_at + p_window <= v_now)
               AND (s.phase = 'postmortem'
                    OR EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING'))
             ORDER BY s.queued_at, s.id
             LIMIT 1
             FOR UPDATE OF s SKIP LOCKED;
        END IF;
        EXIT WHEN v_id IS NULL OR v_account IS NULL;
        -- The account's row locked, its steps in flight counted again: claims of one account
        -- take turns here, on every controller, so none gives out a slot another just took.
        PERFORM 1 FROM api_accounts a WHERE a.account = v_account FOR UPDATE;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM api_accounts a
                               WHERE a.account = v_account
                                 AND (a.pause_until > v_now
                                      OR a.concurrency_limit
                                         <= loopd_account_in_flight(v_account)));
        -- Full after all: look again without it.
        v_blocked := v_blocked || v_account;
        v_id := NULL;
    END LOOP;
    IF v_id IS NULL THEN
        -- Nothing to take; a worker that is not registered may take nothing at all.
        RETURN jsonb_build_object('closed',
                                  NOT EXISTS (SELECT 1 FROM workers WHERE id = p_worker));
    END IF;
    UPDATE steps SET status = 'IN_PROGRESS', worker_id = p_worker,
                     lease_epoch = lease_epoch + 1, started_at = v_now, ended_at = NULL,
                     lease_granted_at = v_now, lease_expires_at = v_now + p_ttl
     WHERE id = v_id RETURNING * INTO v_step;
    -- Each row read once, with its version (a row variable cannot share an INTO list).
    UPDATE run_state SET event_seq = event_seq + 2 WHERE run_id = v_step.run_id
    RETURNING to_jsonb(run_state), event_seq, xmin::text::bigint
         INTO v_state, v_state_seq, v_state_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run_state of % missing', v_step.run_id USING ERRCODE = 'no_data_found';
    END IF;
    SELECT to_jsonb(r), r.xmin::text::bigint INTO v_run, v_run_version
      FROM runs r WHERE r.id = v_step.run_id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    VALUES (p_event_ids[1], v_step.run_id, v_state_seq - 1, v_id, 'LEASE_GRANTED',
            jsonb_build_object('step_id', v_id, 'worker_id', p_worker,
                               'epoch', v_step.lease_epoch,
                               'expires_at', to_char(timestamp '1970-01-01'
                                   + v_step.lease_expires_at * interval '1 millisecond',
                                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text, v_now),
           (p_event_ids[2], v_step.run_id, v_state_seq, v_id, 'STEP_STARTED',
            jsonb_build_object('step_id', v_id, 'phase', v_step.phase,
                               'attempt', v_step.attempt, 'worker_id', p_worker,
                               'epoch', v_step.lease_epoch)::text, v_now);
    RETURN jsonb_build_object('step', to_jsonb(v_step), 'lease', loopd_lease_of(v_step),
                              'run', v_run, 'state', v_state, 'now', v_now,
                              'run_version', v_run_version, 'state_version', v_state_version,
                              'inputs', loopd_decision_inputs(v_step, p_phases));
END $$;
