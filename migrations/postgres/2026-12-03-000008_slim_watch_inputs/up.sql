-- The watchdog's inputs carry only what its comparison reads: each implementation step's id,
-- status and output tail, and the prompt of the newest alone (the one a rewrite starts from).
-- They were whole rows with every prompt: after each verification is queued (every other cycle
-- of a loop), three rows built as JSON, sent and parsed for a prompt and three tails. Made
-- alone inside Postgres (the pool bench's ceiling), the cycle without those rows was about a
-- sixth faster.
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
