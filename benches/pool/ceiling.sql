-- The pool's cycle (a completion that queues the run's next step and leases it to the same
-- worker) with the arguments the controller sends, made inside Postgres by a procedure: the
-- database's own cost of a cycle, without the controller, HTTP, the client protocol or the
-- network. Installed in the throughput section's database after its controller stopped, so
-- its runs and steps (prompts, run configs) are the shapes the bench used.

-- A fresh RUNNING run copied from one of the bench's, with its first step leased to p_worker.
CREATE PROCEDURE bench_ceiling_seed(p_run TEXT, p_worker TEXT) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO workers VALUES (p_worker, 'ceiling', 'x', NULL, '', 1, 'bench', 'online', 0, 0,
                                NULL);
    INSERT INTO runs SELECT * FROM jsonb_populate_record(NULL::runs,
        (SELECT to_jsonb(r) FROM runs r LIMIT 1) || jsonb_build_object('id', p_run));
    INSERT INTO run_state (run_id) VALUES (p_run);
    INSERT INTO steps SELECT * FROM jsonb_populate_record(NULL::steps,
        (SELECT to_jsonb(s) FROM steps s WHERE s.phase = 'implementation' LIMIT 1)
        || jsonb_build_object('id', p_run || '-1', 'run_id', p_run, 'seq', 1, 'attempt', 1,
                              'status', 'IN_PROGRESS', 'worker_id', p_worker,
                              'lease_epoch', 1, 'preferred_worker_id', p_worker,
                              'lease_granted_at', 0, 'lease_expires_at', 9000000000000));
END $$;

-- The arguments of cycle `i` of p_run as the controller sends them (one item of
-- `loopd_complete_and_claim_many`): the step in flight succeeds, the other phase is queued for
-- the same worker (implementation and verification alternate).
CREATE FUNCTION bench_ceiling_item(p_run TEXT, p_worker TEXT, i INT) RETURNS JSONB
LANGUAGE plpgsql AS $$
DECLARE
    cur steps;
    st run_state;
    r runs;
    ph TEXT;
    q JSONB;
    ids TEXT[];
BEGIN
    SELECT * INTO cur FROM steps WHERE run_id = p_run AND status = 'IN_PROGRESS';
    SELECT * INTO st FROM run_state WHERE run_id = p_run;
    SELECT * INTO r FROM runs WHERE id = p_run;
    ph := CASE cur.phase WHEN 'implementation' THEN 'verification' ELSE 'implementation' END;
    ids := ARRAY[gen_random_uuid()::text, gen_random_uuid()::text, gen_random_uuid()::text,
                 gen_random_uuid()::text, gen_random_uuid()::text, gen_random_uuid()::text];
    q := to_jsonb(cur) || jsonb_build_object('id', ids[1], 'seq', cur.seq + 1, 'phase', ph,
        'status', 'QUEUED', 'attempt', cur.attempt + (ph = 'implementation')::int,
        'started_at', NULL, 'ended_at', NULL, 'exit_code', NULL, 'output_path', NULL,
        'output_tail', NULL, 'completion_detected', NULL, 'worker_id', NULL,
        'lease_epoch', 0, 'completion_digest', NULL, 'lease_granted_at', NULL,
        'lease_expires_at', NULL);
    RETURN jsonb_build_object('step', cur.id, 'worker', p_worker, 'epoch', cur.lease_epoch,
        -- The run and its state by their rows' versions, as the controller sends them.
        'run', jsonb_build_object('id', r.id, 'status', r.status, 'version',
                                  (SELECT x.xmin::text::bigint FROM runs x WHERE x.id = p_run)),
        'state_before', jsonb_build_object('version', (SELECT x.xmin::text::bigint
                                                         FROM run_state x
                                                        WHERE x.run_id = p_run)),
        -- The columns the write sets, and no null (the controller leaves those out).
        'done', jsonb_build_object('status', 'SUCCEEDED', 'settled', true, 'exit_code', 0,
            'output_path', 'iter.log', 'output_tail', 'worker step ' || i,
            'completion_digest', ids[2]),
        'queued', jsonb_strip_nulls(q),
        'state', jsonb_strip_nulls(to_jsonb(st) || jsonb_build_object(
                     'event_seq', st.event_seq + 2, 'last_worker_id', p_worker)),
        'events', jsonb_build_array(
            jsonb_build_object('id', ids[3], 'run_id', p_run, 'run_seq', st.event_seq + 1,
                'step_id', cur.id, 'event_type', 'STEP_FINISHED', 'payload_json',
                jsonb_build_object('step_id', cur.id, 'exit_code', 0, 'duration_ms', 1,
                                   'output_path', 'iter.log')::text),
            jsonb_build_object('id', ids[4], 'run_id', p_run, 'run_seq', st.event_seq + 2,
                'step_id', ids[1], 'event_type', 'STEP_QUEUED', 'payload_json',
                jsonb_build_object('step_id', ids[1], 'phase', ph, 'attempt', 1)::text)),
        'allowed', jsonb_build_array(''), 'ttl', 30000, 'window', 5000,
        'event_ids', jsonb_build_array(ids[5], ids[6]));
END $$;

-- `p_cycles` cycles of p_run, `p_per_commit` to a transaction, each through
-- `loopd_complete_and_claim`, which writes it and leases the new step directly.
CREATE PROCEDURE bench_ceiling_cycles(p_run TEXT, p_worker TEXT, p_cycles INT,
                                      p_phases TEXT[], p_per_commit INT)
LANGUAGE plpgsql AS $$
DECLARE
    it JSONB;
    res JSONB;
BEGIN
    FOR i IN 1..p_cycles LOOP
        it := bench_ceiling_item(p_run, p_worker, i);
        res := loopd_complete_and_claim(it ->> 'step', p_worker, (it ->> 'epoch')::bigint,
            it -> 'run', it -> 'state_before', it -> 'done', it -> 'queued', it -> 'state',
            it -> 'events', ARRAY[''], 30000, 5000,
            ARRAY[it -> 'event_ids' ->> 0, it -> 'event_ids' ->> 1], p_phases);
        IF res ->> 'applied' IS DISTINCT FROM 'true' OR res -> 'claim' ->> 'direct' IS NULL THEN
            RAISE EXCEPTION 'cycle % of % not leased directly: %', i, p_run, res;
        END IF;
        IF i % p_per_commit = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END $$;

-- `p_batches` batches of one cycle of each of `p_runs` (each run's step leased to the worker
-- named after it, with '-w'), each batch one call of `loopd_complete_and_claim_many` and one
-- transaction: how the controller writes the completions that arrive together.
CREATE PROCEDURE bench_ceiling_batches(p_runs TEXT[], p_batches INT, p_phases TEXT[])
LANGUAGE plpgsql AS $$
DECLARE
    items JSONB;
    res JSONB;
    run TEXT;
BEGIN
    FOR b IN 1..p_batches LOOP
        items := '[]';
        FOREACH run IN ARRAY p_runs LOOP
            items := items || jsonb_build_array(bench_ceiling_item(run, run || '-w', b));
        END LOOP;
        res := loopd_complete_and_claim_many(items, p_phases);
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(res) e
                    WHERE e ->> 'applied' IS DISTINCT FROM 'true'
                       OR e -> 'claim' ->> 'direct' IS NULL) THEN
            RAISE EXCEPTION 'batch % of % not leased directly: %', b, p_runs, res;
        END IF;
        COMMIT;
    END LOOP;
END $$;
