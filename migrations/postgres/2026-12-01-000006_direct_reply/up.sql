-- A completion that leases its worker the step it has just queued (the direct path of
-- `loopd_complete_and_claim`) answered with everything it had written, read back: the step, its
-- lease, the run, its state and the decision inputs, as JSON. The caller wrote them itself and
-- keeps them, so the answer is now only the database clock, plus the watchdog's inputs when the
-- new step is a verification that may lead to another implementation (the one part the caller
-- cannot know). The run and state in the snapshot the caller builds are checked like any
-- other by the next completion's write (a mistake there costs a fresh read). The direct
-- path's two events are written by the completion's events statement, and the statements
-- reading back the step, run and state are gone: about a third fewer statements per cycle.
--
-- The watchdog's inputs (a run's newest implementation steps, whole rows as JSON) were the
-- largest part of what a cycle reads (`auto_explain`): the list of the two newest that succeeded
-- is now read only when the decision uses it (fewer than two of the three newest succeeded),
-- and the direct path reads the lists alone (the rest of the inputs follow from what the
-- caller knows).
--
-- Also: a lease past its expiry that the sweep has not yet taken back is still held (as the
-- transactional path has it since the pause handling), so the write no longer refuses it.

-- The watchdog's inputs of a run: its three newest implementation steps, newest first, and,
-- only when fewer than two of them succeeded (the one case the decision reads it), its two
-- newest implementation steps that succeeded.
CREATE FUNCTION loopd_watch_inputs(p_run TEXT)
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_recent JSONB;
BEGIN
    SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]') INTO v_recent
      FROM (SELECT * FROM steps WHERE run_id = p_run AND phase = 'implementation'
             ORDER BY seq DESC LIMIT 3) s;
    RETURN jsonb_build_object('recent_impls', v_recent, 'succeeded_impls',
        CASE WHEN jsonb_array_length(v_recent) = 3
                  AND (SELECT count(*) FROM jsonb_array_elements(v_recent) e
                        WHERE e ->> 'status' = 'SUCCEEDED') < 2 THEN
            (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.seq DESC), '[]')
               FROM (SELECT * FROM steps WHERE run_id = p_run AND phase = 'implementation'
                        AND status = 'SUCCEEDED'
                      ORDER BY seq DESC LIMIT 2) s)
        ELSE '[]' END);
END $$;

-- As before, with the watchdog's lists from `loopd_watch_inputs`.
CREATE OR REPLACE FUNCTION loopd_decision_inputs(p_step steps, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN jsonb_build_object(
        'others_active', EXISTS (SELECT 1 FROM steps s WHERE s.run_id = p_step.run_id
                                    AND s.id <> p_step.id
                                    AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')),
        'attempts', (SELECT coalesce(jsonb_object_agg(p, a), '{}'::jsonb)
                       FROM (SELECT p, (SELECT max(s.attempt) FROM steps s
                                         WHERE s.run_id = p_step.run_id AND s.phase = p) AS a
                               FROM unnest(p_phases) AS p) m
                      WHERE a IS NOT NULL))
        || CASE WHEN p_step.phase = 'verification' AND NOT p_step.is_final
                THEN loopd_watch_inputs(p_step.run_id)
                ELSE '{"recent_impls": [], "succeeded_impls": []}' END;
END $$;

-- `loopd_complete_apply` at a time the caller chose (the direct path needs it first).
CREATE FUNCTION loopd_complete_apply_at(p_now BIGINT, p_step TEXT, p_worker TEXT,
                                        p_epoch BIGINT, p_run JSONB, p_state_before JSONB,
                                        p_done JSONB, p_queued JSONB, p_state JSONB,
                                        p_events JSONB)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_lease leases;
    v_run runs;
    v_state run_state;
    n steps;
    rs run_state;
BEGIN
    SELECT l.* INTO v_lease FROM leases l JOIN steps s ON s.id = l.step_id
     WHERE l.step_id = p_step FOR UPDATE;
    IF NOT FOUND OR v_lease.worker_id <> p_worker OR v_lease.epoch <> p_epoch THEN
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
    UPDATE steps SET status = n.status, settled = n.settled, ended_at = p_now,
                     exit_code = n.exit_code, output_path = n.output_path,
                     output_tail = n.output_tail, runner_notes = n.runner_notes,
                     completion_detected = n.completion_detected,
                     failure_reason = n.failure_reason,
                     completion_digest = n.completion_digest
     WHERE id = p_step;
    IF p_queued IS NOT NULL THEN
        INSERT INTO steps
        SELECT * FROM jsonb_populate_record(NULL::steps,
            p_queued || CASE WHEN p_queued ->> 'status' = 'IN_PROGRESS'
                             THEN jsonb_build_object('queued_at', p_now, 'started_at', p_now)
                             ELSE jsonb_build_object('queued_at', p_now) END);
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
    SELECT id, run_id, run_seq, step_id, event_type, payload_json, p_now
      FROM jsonb_populate_recordset(NULL::events, p_events);
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION loopd_complete_apply(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                                p_run JSONB, p_state_before JSONB,
                                                p_done JSONB, p_queued JSONB, p_state JSONB,
                                                p_events JSONB)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN loopd_complete_apply_at(loopd_now_ms(), p_step, p_worker, p_epoch, p_run,
                                   p_state_before, p_done, p_queued, p_state, p_events);
END $$;

-- As before, except for the direct path's answer: {"applied": true, "claim": {"direct": true,
-- "now": <database clock>, "watch": <loopd_watch_inputs of the run, only when the new step is
-- a verification that is not final>}}. The step is inserted leased as `p_queued` says with
-- status IN_PROGRESS, worker `p_worker`, lease epoch + 1 and queued and started at "now"; its
-- lease runs from "now" for `p_ttl`; the state is `p_state` with `event_seq` + 2
-- (LEASE_GRANTED and STEP_STARTED, numbered after the completion's events).
CREATE OR REPLACE FUNCTION loopd_complete_and_claim(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                                    p_run JSONB, p_state_before JSONB,
                                                    p_done JSONB, p_queued JSONB, p_state JSONB,
                                                    p_events JSONB,
                                                    p_allowed TEXT[], p_ttl BIGINT,
                                                    p_window BIGINT, p_event_ids TEXT[],
                                                    p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_seq BIGINT := (p_state ->> 'event_seq')::bigint;
    v_now BIGINT;
    v_id TEXT;
    v_epoch BIGINT;
    v_leased JSONB;
BEGIN
    IF p_queued IS NULL OR p_queued ->> 'preferred_worker_id' IS DISTINCT FROM p_worker
       OR p_run ->> 'status' <> 'RUNNING'
       OR NOT (p_queued ->> 'required_labels') = ANY (p_allowed)
       OR EXISTS (SELECT 1 FROM workers w
                  WHERE w.id = p_worker AND w.status IN ('draining', 'revoked')) THEN
        IF NOT loopd_complete_apply(p_step, p_worker, p_epoch, p_run, p_state_before,
                                    p_done, p_queued, p_state, p_events) THEN
            RETURN jsonb_build_object('applied', false);
        END IF;
        RETURN jsonb_build_object('applied', true,
                                  'claim', loopd_claim(p_worker, p_allowed, p_ttl, p_window,
                                                       p_event_ids, p_phases));
    END IF;
    v_now := loopd_now_ms();
    v_id := p_queued ->> 'id';
    v_epoch := (p_queued ->> 'lease_epoch')::bigint + 1;
    v_leased := p_queued || jsonb_build_object('status', 'IN_PROGRESS', 'worker_id', p_worker,
                                               'lease_epoch', v_epoch);
    IF NOT loopd_complete_apply_at(v_now, p_step, p_worker, p_epoch, p_run, p_state_before,
            p_done, v_leased, p_state || jsonb_build_object('event_seq', v_seq + 2),
            p_events || jsonb_build_array(
                jsonb_build_object('id', p_event_ids[1], 'run_id', p_queued ->> 'run_id',
                    'run_seq', v_seq + 1, 'step_id', v_id, 'event_type', 'LEASE_GRANTED',
                    'payload_json', jsonb_build_object('step_id', v_id, 'worker_id', p_worker,
                        'epoch', v_epoch,
                        'expires_at', to_char(timestamp '1970-01-01'
                            + (v_now + p_ttl) * interval '1 millisecond',
                            'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text),
                jsonb_build_object('id', p_event_ids[2], 'run_id', p_queued ->> 'run_id',
                    'run_seq', v_seq + 2, 'step_id', v_id, 'event_type', 'STEP_STARTED',
                    'payload_json', jsonb_build_object('step_id', v_id,
                        'phase', p_queued ->> 'phase',
                        'attempt', (p_queued ->> 'attempt')::int, 'worker_id', p_worker,
                        'epoch', v_epoch)::text))) THEN
        RETURN jsonb_build_object('applied', false);
    END IF;
    INSERT INTO leases (step_id, worker_id, epoch, granted_at, expires_at, attempt)
    VALUES (v_id, p_worker, v_epoch, v_now, v_now + p_ttl, (p_queued ->> 'attempt')::int);
    RETURN jsonb_build_object('applied', true, 'claim', jsonb_build_object(
        'direct', true, 'now', v_now,
        'watch', CASE WHEN p_queued ->> 'phase' = 'verification'
                           AND NOT (p_queued ->> 'is_final')::boolean
                      THEN loopd_watch_inputs(p_queued ->> 'run_id') END));
END $$;
