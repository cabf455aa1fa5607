-- The claimable steps in claim order, and those waiting for a given worker.
CREATE INDEX steps_claimable ON steps (queued_at, id) WHERE status IN ('QUEUED', 'RETRYING');
CREATE INDEX steps_claimable_preferred ON steps (preferred_worker_id, queued_at, id)
    WHERE status IN ('QUEUED', 'RETRYING');
-- A run's highest attempt of a phase, read by every claim and completion.
CREATE INDEX steps_run_phase_attempt ON steps (run_id, phase, attempt);
-- A run's unfinished steps. Every change of a step's status writes a new entry into each
-- index of `steps`, so the indexes the partial ones above and this one replace go.
CREATE INDEX steps_run_active ON steps (run_id)
    WHERE status IN ('QUEUED', 'IN_PROGRESS', 'RETRYING');
DROP INDEX steps_status_queued;
DROP INDEX steps_run_status;
-- Only events without a run are read by time (a run's are read by number): four fewer index
-- entries per claim and completion.
CREATE INDEX events_global ON events (event_type, created_at, id) WHERE run_id IS NULL;
DROP INDEX events_created;

-- The two hot paths of a worker pool in one round trip each: a claim, and a completion's
-- write (plus, when what the claim read no longer holds, a snapshot read). Every statement a
-- client sends costs the server about as much as a whole one-row transaction, while the
-- statements inside a function stay planned and cost little. The decisions stay in Rust:
-- these functions only pick, read, check and write. SQLite runs the transactional path.

-- Claims the oldest claimable step a worker may run (as `leases::claim`), grants its lease and
-- records LEASE_GRANTED and STEP_STARTED (ids given by the caller), in one statement.
-- Returns {"closed": true} for a draining or revoked worker (and for an unknown one when
-- nothing matched), {"closed": false} when nothing matched, else {"step", "lease", "run",
-- "state", "now"}.
CREATE FUNCTION loopd_claim(p_worker TEXT, p_allowed TEXT[], p_ttl BIGINT, p_window BIGINT,
                            p_event_ids TEXT[], p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
-- Planned once per connection: a fresh plan on every call cost more than the work itself.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now BIGINT := loopd_now_ms();
    v_id TEXT;
    v_step steps;
    v_lease leases;
    v_state run_state;
    v_run runs;
BEGIN
    IF EXISTS (SELECT 1 FROM workers w
               WHERE w.id = p_worker AND w.status IN ('draining', 'revoked')) THEN
        RETURN jsonb_build_object('closed', true);
    END IF;
    -- A step waiting for this very worker first (taking another run's step instead would
    -- leave its own waiting a whole window), then the oldest that waits for no one; both
    -- walk the claimable steps' own indexes in order and stop at the first they can lock.
    SELECT s.id INTO v_id FROM steps s
     WHERE s.preferred_worker_id = p_worker AND s.status IN ('QUEUED', 'RETRYING')
       AND s.required_labels = ANY (p_allowed)
       AND EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING')
     ORDER BY s.queued_at, s.id
     LIMIT 1
     FOR UPDATE OF s SKIP LOCKED;
    IF v_id IS NULL THEN
        SELECT s.id INTO v_id FROM steps s
         WHERE s.status IN ('QUEUED', 'RETRYING')
           AND s.required_labels = ANY (p_allowed)
           AND (s.preferred_worker_id IS NULL OR s.queued_at + p_window <= v_now)
           AND EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING')
         ORDER BY s.queued_at, s.id
         LIMIT 1
         FOR UPDATE OF s SKIP LOCKED;
    END IF;
    IF v_id IS NULL THEN
        -- Nothing to take; a worker that is not registered may take nothing at all.
        RETURN jsonb_build_object('closed',
                                  NOT EXISTS (SELECT 1 FROM workers WHERE id = p_worker));
    END IF;
    UPDATE steps SET status = 'IN_PROGRESS', worker_id = p_worker,
                     lease_epoch = lease_epoch + 1, started_at = v_now, ended_at = NULL
     WHERE id = v_id RETURNING * INTO v_step;
    INSERT INTO leases (step_id, worker_id, epoch, granted_at, expires_at, attempt)
    VALUES (v_id, p_worker, v_step.lease_epoch, v_now, v_now + p_ttl, v_step.attempt)
    ON CONFLICT (step_id) DO UPDATE
       SET worker_id = excluded.worker_id, epoch = excluded.epoch,
           granted_at = excluded.granted_at, expires_at = excluded.expires_at,
           attempt = excluded.attempt
    RETURNING * INTO v_lease;
    UPDATE run_state SET event_seq = event_seq + 2 WHERE run_id = v_step.run_id
    RETURNING * INTO v_state;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run_state of % missing', v_step.run_id USING ERRCODE = 'no_data_found';
    END IF;
    SELECT * INTO v_run FROM runs WHERE id = v_step.run_id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    VALUES (p_event_ids[1], v_step.run_id, v_state.event_seq - 1, v_id, 'LEASE_GRANTED',
            jsonb_build_object('step_id', v_id, 'worker_id', p_worker,
                               'epoch', v_lease.epoch,
                               'expires_at', to_char(timestamp '1970-01-01'
                                   + v_lease.expires_at * interval '1 millisecond',
                                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text, v_now),
           (p_event_ids[2], v_step.run_id, v_state.event_seq, v_id, 'STEP_STARTED',
            jsonb_build_object('step_id', v_id, 'phase', v_step.phase,
                               'attempt', v_step.attempt, 'worker_id', p_worker,
                               'epoch', v_lease.epoch)::text, v_now);
    RETURN jsonb_build_object('step', to_jsonb(v_step), 'lease', to_jsonb(v_lease),
                              'run', to_jsonb(v_run), 'state', to_jsonb(v_state), 'now', v_now,
                              'inputs', loopd_decision_inputs(v_step, p_phases));
END $$;

-- What deciding what follows `p_step` reads besides its run and state: whether another step of
-- the run is in flight, the highest attempt of each of `p_phases`, and, after a verification that
-- may lead to another implementation, the run's newest implementation steps (the three newest
-- and the two newest that succeeded: the watchdog's inputs).
CREATE FUNCTION loopd_decision_inputs(p_step steps, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_watch BOOLEAN := p_step.phase = 'verification' AND NOT p_step.is_final;
BEGIN
    RETURN jsonb_build_object(
        'others_active', EXISTS (SELECT 1 FROM steps s WHERE s.run_id = p_step.run_id
                                    AND s.id <> p_step.id
                                    AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')),
        'attempts', (SELECT coalesce(jsonb_object_agg(p, a), '{}'::jsonb)
                       FROM (SELECT p, (SELECT max(s.attempt) FROM steps s
                                         WHERE s.run_id = p_step.run_id AND s.phase = p) AS a
                               FROM unnest(p_phases) AS p) m
                      WHERE a IS NOT NULL),
        'recent_impls', CASE WHEN v_watch THEN
            (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]')
               FROM (SELECT * FROM steps WHERE run_id = p_step.run_id
                        AND phase = 'implementation'
                      ORDER BY seq DESC LIMIT 3) s) ELSE '[]' END,
        'succeeded_impls', CASE WHEN v_watch THEN
            (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]')
               FROM (SELECT * FROM steps WHERE run_id = p_step.run_id
                        AND phase = 'implementation' AND status = 'SUCCEEDED'
                      ORDER BY seq DESC LIMIT 2) s) ELSE '[]' END);
END $$;

-- What a completion's decision reads, in one statement and without locks: the step's lease
-- and row (without its prompt, which a completion neither reads nor writes), its run and
-- state, and `loopd_decision_inputs`. `loopd_complete_apply` checks that none of it changed
-- before writing. (A claim returns the same, so that a completion arriving before anything
-- else changed needs no snapshot at all.)
CREATE FUNCTION loopd_complete_snapshot(p_step TEXT, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_step steps;
BEGIN
    SELECT * INTO v_step FROM steps WHERE id = p_step;
    IF NOT FOUND THEN
        RETURN '{}'::jsonb;
    END IF;
    RETURN jsonb_build_object(
        'now', loopd_now_ms(),
        'step', to_jsonb(v_step) - 'prompt',
        'lease', (SELECT to_jsonb(l) FROM leases l WHERE l.step_id = p_step),
        'run', (SELECT to_jsonb(r) FROM runs r WHERE r.id = v_step.run_id),
        'state', (SELECT to_jsonb(rs) FROM run_state rs WHERE rs.run_id = v_step.run_id),
        'inputs', loopd_decision_inputs(v_step, p_phases));
END $$;

-- Writes a completion decided from a snapshot, if the snapshot still holds: the lease is
-- still `p_worker`'s at `p_epoch` and unexpired, and the run and its state are exactly as read
-- (every change that could alter the decision — a claim, a requeue, a cancel, an event —
-- changes one of them), and no other step of the run is in flight. Locks in the order the
-- transactional path does (lease and step, then run and state). The step's end, the queued
-- step's queue time and the events' time are this statement's database time. Returns false,
-- having written nothing, when anything moved; the caller then reads a snapshot again or
-- takes the transactional path.
CREATE FUNCTION loopd_complete_apply(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                     p_run JSONB, p_state_before JSONB,
                                     p_done JSONB, p_queued JSONB, p_state JSONB,
                                     p_events JSONB)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE
-- Planned once per connection: a fresh plan on every call cost more than the work itself.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_lease leases;
    v_run runs;
    v_state run_state;
    n steps;
    rs run_state;
    v_now BIGINT := loopd_now_ms();
BEGIN
    SELECT l.* INTO v_lease FROM leases l JOIN steps s ON s.id = l.step_id
     WHERE l.step_id = p_step FOR UPDATE;
    IF NOT FOUND OR v_lease.worker_id <> p_worker OR v_lease.epoch <> p_epoch
       OR v_lease.expires_at <= v_now THEN
        RETURN false;
    END IF;
    SELECT r.* INTO v_run FROM runs r JOIN run_state x ON x.run_id = r.id
     WHERE r.id = p_run ->> 'id' FOR UPDATE;
    SELECT * INTO v_state FROM run_state WHERE run_id = v_run.id;
    -- (The run's waiting_reason is a note for people that no decision reads.)
    IF to_jsonb(v_run) - 'waiting_reason' <> p_run - 'waiting_reason'
       OR to_jsonb(v_state) <> p_state_before
       OR EXISTS (SELECT 1 FROM steps s WHERE s.run_id = v_run.id AND s.id <> p_step
                     AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')) THEN
        RETURN false;
    END IF;
    DELETE FROM leases WHERE step_id = p_step;
    n := jsonb_populate_record(NULL::steps, p_done);
    UPDATE steps SET status = n.status, settled = n.settled, ended_at = v_now,
                     exit_code = n.exit_code, output_path = n.output_path,
                     output_tail = n.output_tail, runner_notes = n.runner_notes,
                     completion_detected = n.completion_detected,
                     failure_reason = n.failure_reason,
                     completion_digest = n.completion_digest
     WHERE id = p_step;
    IF p_queued IS NOT NULL THEN
        INSERT INTO steps
        SELECT * FROM jsonb_populate_record(NULL::steps,
                                            p_queued || jsonb_build_object('queued_at', v_now));
    END IF;
    rs := jsonb_populate_record(NULL::run_state, p_state);
    UPDATE run_state SET iterations_done = rs.iterations_done,
                         verify_failures = rs.verify_failures,
                         review_failures = rs.review_failures,
                         watchdog_rewrites = rs.watchdog_rewrites,
                         pending_prompt = rs.pending_prompt, runner_notes = rs.runner_notes,
                         last_worker_id = rs.last_worker_id,
                         checkpoint_name = rs.checkpoint_name,
                         checkpoint_head = rs.checkpoint_head,
                         finishing = rs.finishing, event_seq = rs.event_seq
     WHERE run_id = v_run.id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    SELECT id, run_id, run_seq, step_id, event_type, payload_json, v_now
      FROM jsonb_populate_recordset(NULL::events, p_events);
    RETURN true;
END $$;
