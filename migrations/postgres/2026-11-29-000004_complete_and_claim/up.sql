-- A run's implementation steps, newest first: what the watchdog reads after every
-- verification. Without it, Postgres fetched and sorted every implementation step the run
-- ever had (`steps_run_phase_attempt` orders by attempt, not by seq) — the claim's largest
-- cost, growing with the run.
CREATE INDEX steps_run_implementations ON steps (run_id, seq) WHERE phase = 'implementation';

-- The same inputs, each phase's highest attempt looked up once (it was looked up twice: once
-- to drop the phases a run never had, once for the value).
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
        'attempts', (SELECT coalesce(jsonb_object_agg(p, m.a), '{}'::jsonb)
                       FROM unnest(p_phases) AS p
                            CROSS JOIN LATERAL (SELECT max(s.attempt) AS a FROM steps s
                                                 WHERE s.run_id = p_step.run_id
                                                   AND s.phase = p) m
                      WHERE m.a IS NOT NULL),
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
