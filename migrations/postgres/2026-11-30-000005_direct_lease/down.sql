-- The functions as migrations 2026-11-28-000003 and 2026-11-29-000004 created them.
CREATE OR REPLACE FUNCTION loopd_complete_apply(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
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

CREATE OR REPLACE FUNCTION loopd_complete_and_claim(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                         p_run JSONB, p_state_before JSONB,
                                         p_done JSONB, p_queued JSONB, p_state JSONB,
                                         p_events JSONB,
                                         p_allowed TEXT[], p_ttl BIGINT, p_window BIGINT,
                                         p_event_ids TEXT[], p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    IF NOT loopd_complete_apply(p_step, p_worker, p_epoch, p_run, p_state_before,
                                p_done, p_queued, p_state, p_events) THEN
        RETURN jsonb_build_object('applied', false);
    END IF;
    RETURN jsonb_build_object('applied', true,
                              'claim', loopd_claim(p_worker, p_allowed, p_ttl, p_window,
                                                   p_event_ids, p_phases));
END $$;
