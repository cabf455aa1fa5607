-- A run's implementation steps, newest first: what the watchdog reads after every
-- verification. Without it, Postgres fetched and sorted every implementation step the run
-- ever had (`steps_run_phase_attempt` orders by attempt, not by seq) — the claim's largest
-- cost, growing with the run.
CREATE INDEX steps_run_implementations ON steps (run_id, seq) WHERE phase = 'implementation';

-- A worker that finishes a step usually wants the next one at once: a completion may ask for
-- it, and then the write and the claim are one statement and one transaction
-- (`loopd_complete_apply`, then `loopd_claim` for the same worker) instead of two requests,
-- two statements and two transactions. Returns {"applied": false} having written nothing when
-- the completion's snapshot no longer holds (the caller then takes the other paths and claims
-- separately), else {"applied": true, "claim": <what loopd_claim returns>}.
CREATE FUNCTION loopd_complete_and_claim(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
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
