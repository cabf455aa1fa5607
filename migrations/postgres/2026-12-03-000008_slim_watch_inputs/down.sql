-- The watchdog's inputs as whole rows again (as 2026-12-01-000006_direct_reply has them).
CREATE OR REPLACE FUNCTION loopd_watch_inputs(p_run TEXT)
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
