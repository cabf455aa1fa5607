-- Writes a completion decided from a snapshot, if the snapshot still holds, at the time
-- `p_now`: the lease is still `p_worker`'s at `p_epoch` (one past its expiry that the sweep has
-- not taken back is still held), the run and its state are at the versions the decision read
-- (`p_run ->> 'version'`, `p_state_before ->> 'version'`: every change that could alter the
-- decision changes one of them), and no other step of the run is in flight. Locks in the order
-- the transactional path does (step, then run and state). Ends the step and its lease, inserts
-- the queued step (`p_queued`, queued — and, when inserted IN_PROGRESS, started — at `p_now`),
-- writes the state and the events. Returns false, having written nothing, when anything moved;
-- the caller then reads a snapshot again or takes the transactional path.
-- Called by: loopd_complete_apply, loopd_complete_and_claim (its direct path).
-- History: migrations 2026-12-01-000006_direct_reply, 2026-12-06-000012_leases_in_steps,
-- 2026-12-07-000013_versions_not_rows.
CREATE OR REPLACE FUNCTION loopd_complete_apply_at(p_now BIGINT, p_step TEXT, p_worker TEXT,
                                        p_epoch BIGINT, p_run JSONB, p_state_before JSONB,
                                        p_done JSONB, p_queued JSONB, p_state JSONB,
                                        p_events JSONB)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_holder TEXT;
    v_epoch BIGINT;
    v_run_id TEXT;
    v_versions_hold BOOLEAN;
    n steps;
    rs run_state;
BEGIN
    SELECT s.worker_id, s.lease_epoch INTO v_holder, v_epoch FROM steps s
     WHERE s.id = p_step AND s.lease_expires_at IS NOT NULL FOR UPDATE;
    IF NOT FOUND OR v_holder IS DISTINCT FROM p_worker OR v_epoch <> p_epoch THEN
        RETURN false;
    END IF;
    -- The run and its state as the decision read them: their rows' versions unchanged.
    SELECT r.id, r.xmin::text::bigint = (p_run ->> 'version')::bigint
                 AND x.xmin::text::bigint = (p_state_before ->> 'version')::bigint
      INTO v_run_id, v_versions_hold
      FROM runs r JOIN run_state x ON x.run_id = r.id
     WHERE r.id = p_run ->> 'id' FOR UPDATE;
    IF NOT FOUND OR v_versions_hold IS NOT TRUE
       OR EXISTS (SELECT 1 FROM steps s WHERE s.run_id = v_run_id AND s.id <> p_step
                     AND s.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS')) THEN
        RETURN false;
    END IF;
    n := jsonb_populate_record(NULL::steps, p_done);
    UPDATE steps SET status = n.status, settled = n.settled, ended_at = p_now,
                     exit_code = n.exit_code, output_path = n.output_path,
                     output_tail = n.output_tail, runner_notes = n.runner_notes,
                     completion_detected = n.completion_detected,
                     failure_reason = n.failure_reason,
                     completion_digest = n.completion_digest,
                     lease_granted_at = NULL, lease_expires_at = NULL
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
     WHERE run_id = v_run_id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    SELECT id, run_id, run_seq, step_id, event_type, payload_json, p_now
      FROM jsonb_populate_recordset(NULL::events, p_events);
    RETURN true;
END $$;
