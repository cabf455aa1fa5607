-- The watchdog's inputs of a run: its three newest implementation steps, newest first, and,
-- only when fewer than two of them succeeded (the one case the decision reads it), its two
-- newest implementation steps that succeeded. Each carries only what the watchdog's
-- comparison reads: id, status and output tail, plus the prompt of the newest alone (the one a
-- rewrite starts from).
-- Called by: loopd_decision_inputs, and the direct path of loopd_complete_and_claim and
-- loopd_complete_and_claim_many (after a verification that is not final is queued).
-- History: migrations 2026-12-01-000006_direct_reply, 2026-12-03-000008_slim_watch_inputs.
CREATE OR REPLACE FUNCTION loopd_watch_inputs(p_run TEXT)
RETURNS JSONB LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_recent JSONB;
BEGIN
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'status', s.status,
                                                 'output_tail', s.output_tail,
                                                 'prompt', CASE WHEN s.n = 1 THEN s.prompt END)
                              ORDER BY s.seq DESC), '[]') INTO v_recent
      FROM (SELECT id, seq, status, output_tail, prompt,
                   row_number() OVER (ORDER BY seq DESC) AS n
              FROM steps WHERE run_id = p_run AND phase = 'implementation'
             ORDER BY seq DESC LIMIT 3) s;
    RETURN jsonb_build_object('recent_impls', v_recent, 'succeeded_impls',
        CASE WHEN jsonb_array_length(v_recent) = 3
                  AND (SELECT count(*) FROM jsonb_array_elements(v_recent) e
                        WHERE e ->> 'status' = 'SUCCEEDED') < 2 THEN
            (SELECT coalesce(jsonb_agg(jsonb_build_object('id', s.id, 'status', s.status,
                                                          'output_tail', s.output_tail,
                                                          'prompt', NULL)
                                       ORDER BY s.seq DESC), '[]')
               FROM (SELECT id, seq, status, output_tail FROM steps
                      WHERE run_id = p_run AND phase = 'implementation'
                        AND status = 'SUCCEEDED'
                      ORDER BY seq DESC LIMIT 2) s)
        ELSE '[]' END);
END $$;
