-- The functions as migrations 2026-11-28-000003 and 2026-11-30-000005 left them (restated).
CREATE OR REPLACE FUNCTION loopd_complete_apply(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                                p_run JSONB, p_state_before JSONB,
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
            p_queued || CASE WHEN p_queued ->> 'status' = 'IN_PROGRESS'
                             THEN jsonb_build_object('queued_at', v_now, 'started_at', v_now)
                             ELSE jsonb_build_object('queued_at', v_now) END);
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
    v_step steps;
    v_lease leases;
    v_state run_state;
    v_run runs;
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
    IF NOT loopd_complete_apply(p_step, p_worker, p_epoch, p_run, p_state_before, p_done,
            p_queued || jsonb_build_object('status', 'IN_PROGRESS', 'worker_id', p_worker,
                                           'lease_epoch',
                                           (p_queued ->> 'lease_epoch')::bigint + 1),
            p_state || jsonb_build_object('event_seq', v_seq + 2), p_events) THEN
        RETURN jsonb_build_object('applied', false);
    END IF;
    SELECT * INTO v_step FROM steps WHERE id = p_queued ->> 'id';
    INSERT INTO leases (step_id, worker_id, epoch, granted_at, expires_at, attempt)
    VALUES (v_step.id, p_worker, v_step.lease_epoch, v_step.started_at,
            v_step.started_at + p_ttl, v_step.attempt)
    RETURNING * INTO v_lease;
    SELECT * INTO v_state FROM run_state WHERE run_id = v_step.run_id;
    SELECT * INTO v_run FROM runs WHERE id = v_step.run_id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    VALUES (p_event_ids[1], v_step.run_id, v_seq + 1, v_step.id, 'LEASE_GRANTED',
            jsonb_build_object('step_id', v_step.id, 'worker_id', p_worker,
                               'epoch', v_lease.epoch,
                               'expires_at', to_char(timestamp '1970-01-01'
                                   + v_lease.expires_at * interval '1 millisecond',
                                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text,
            v_step.started_at),
           (p_event_ids[2], v_step.run_id, v_seq + 2, v_step.id, 'STEP_STARTED',
            jsonb_build_object('step_id', v_step.id, 'phase', v_step.phase,
                               'attempt', v_step.attempt, 'worker_id', p_worker,
                               'epoch', v_lease.epoch)::text, v_step.started_at);
    RETURN jsonb_build_object('applied', true,
        'claim', jsonb_build_object('step', to_jsonb(v_step), 'lease', to_jsonb(v_lease),
                                    'run', to_jsonb(v_run), 'state', to_jsonb(v_state),
                                    'now', v_step.started_at,
                                    'inputs', loopd_decision_inputs(v_step, p_phases)));
END $$;

DROP FUNCTION loopd_complete_apply_at(bigint, text, text, bigint, jsonb, jsonb, jsonb, jsonb,
                                      jsonb, jsonb);

CREATE OR REPLACE FUNCTION loopd_decision_inputs(p_step steps, p_phases TEXT[])
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

DROP FUNCTION loopd_watch_inputs(text);
