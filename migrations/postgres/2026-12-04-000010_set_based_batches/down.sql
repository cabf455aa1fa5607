-- Each completion of a batch through `loopd_complete_and_claim`, one after the other (as
-- 2026-12-02-000007_batched_completions has it).
CREATE OR REPLACE FUNCTION loopd_complete_and_claim_many(p_items JSONB, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    it JSONB;
    replies JSONB[] := '{}';
BEGIN
    FOR it IN SELECT value FROM jsonb_array_elements(p_items) LOOP
        replies := replies || loopd_complete_and_claim(
            it ->> 'step', it ->> 'worker', (it ->> 'epoch')::bigint, it -> 'run',
            it -> 'state_before', it -> 'done', NULLIF(it -> 'queued', 'null'::jsonb),
            it -> 'state', it -> 'events',
            ARRAY(SELECT jsonb_array_elements_text(it -> 'allowed')),
            (it ->> 'ttl')::bigint, (it ->> 'window')::bigint,
            ARRAY(SELECT jsonb_array_elements_text(it -> 'event_ids')), p_phases);
    END LOOP;
    RETURN to_jsonb(replies);
END $$;
