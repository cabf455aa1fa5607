-- A completion's write and its worker's next claim in one statement and one transaction.
-- Returns {"applied": false} having written nothing when the completion's snapshot no longer
-- holds (the caller then takes the other paths and claims separately). Otherwise:
-- - the direct path: when the queued step waits for this very worker, of a RUNNING run, needs
--   no label the worker lacks, the worker is neither draining nor revoked, and its agent
--   account has a slot for it (loopd_account_has_slot), the step is
--   inserted already leased to it (status IN_PROGRESS, lease epoch + 1, queued and started at
--   "now", its lease running from "now" for `p_ttl`), the state gets `event_seq` + 2 and
--   LEASE_GRANTED and STEP_STARTED are numbered after the completion's events. The answer is
--   {"applied": true, "claim": {"direct": true, "now", "state_version", "watch"}}: the caller
--   wrote everything else itself (src/db/leased.rs builds the claim from it); "watch" is
--   loopd_watch_inputs of the run, only when the new step is a verification that is not final;
-- - else loopd_complete_apply, then loopd_claim for the same worker:
--   {"applied": true, "claim": <what loopd_claim returns>}.
-- Called by: loopd_complete_and_claim_many, for the items it does not write set by set (the
-- controller sends even a lone completion as a batch of one).
-- History: migrations 2026-11-29-000004_complete_and_claim, 2026-11-30-000005_direct_lease,
-- 2026-12-01-000006_direct_reply, 2026-12-06-000012_leases_in_steps,
-- 2026-12-07-000013_versions_not_rows, 2026-12-10-323001_api_accounts.
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
                  WHERE w.id = p_worker AND w.status IN ('draining', 'revoked'))
       OR NOT loopd_account_has_slot(p_queued ->> 'account', p_step) THEN
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
                                               'lease_epoch', v_epoch,
                                               'lease_granted_at', v_now,
                                               'lease_expires_at', v_now + p_ttl);
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
    RETURN jsonb_build_object('applied', true, 'claim', jsonb_build_object(
        'direct', true, 'now', v_now,
        'state_version', (SELECT x.xmin::text::bigint FROM run_state x
                           WHERE x.run_id = p_run ->> 'id'),
        'watch', CASE WHEN p_queued ->> 'phase' = 'verification'
                           AND NOT (p_queued ->> 'is_final')::boolean
                      THEN loopd_watch_inputs(p_queued ->> 'run_id') END));
END $$;
