-- A completion's write checks that the run and its state are as its decision read them. It
-- used to compare them with the rows, sent whole with every completion (the run's 26 columns,
-- its state's 12) and built again from the rows as JSON to compare (`to_jsonb`): for each
-- completion of a batch, Postgres parsed both, built both and compared them, about a tenth of
-- its CPU in a busy pool (a profile of the whole machine). A row's version says the same:
-- `xmin`, the transaction that wrote it, changes with every update of the row and with
-- nothing else (a lock or a read leaves it). Snapshots now carry the versions of the run and
-- its state (`run_version`, `state_version`), a completion sends them instead of the rows
-- (`run` keeps its id and status, which the batch reads; `state_before` is the version
-- alone), and the write compares them; a version missing or unequal refuses the write. The
-- one difference: an update that changes nothing a decision reads (the run's
-- `waiting_reason`, which the row comparison left out) now sends the completion to read a
-- fresh snapshot; that note changes only for runs whose step waits for a worker, not while
-- one runs it. A direct lease's reply carries the state's new version, for the snapshot the
-- controller builds from it.

CREATE OR REPLACE FUNCTION loopd_claim(p_worker TEXT, p_allowed TEXT[], p_ttl BIGINT, p_window BIGINT,
                            p_event_ids TEXT[], p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
-- Planned once per connection: a fresh plan on every call cost more than the work itself.
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now BIGINT := loopd_now_ms();
    v_id TEXT;
    v_step steps;
    v_state JSONB;
    v_state_seq BIGINT;
    v_run JSONB;
    v_run_version BIGINT;
    v_state_version BIGINT;
BEGIN
    IF EXISTS (SELECT 1 FROM workers w
               WHERE w.id = p_worker AND w.status IN ('draining', 'revoked')) THEN
        RETURN jsonb_build_object('closed', true);
    END IF;
    -- A step waiting for this very worker first (taking another run's step instead would
    -- leave its own waiting a whole window), then the oldest that waits for no one; both
    -- walk the claimable steps' own indexes in order and stop at the first they can lock.
    SELECT s.id INTO v_id FROM steps s
     WHERE s.preferred_worker_id = p_worker AND s.status IN ('QUEUED', 'RETRYING')
       AND s.required_labels = ANY (p_allowed)
       AND EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING')
     ORDER BY s.queued_at, s.id
     LIMIT 1
     FOR UPDATE OF s SKIP LOCKED;
    IF v_id IS NULL THEN
        SELECT s.id INTO v_id FROM steps s
         WHERE s.status IN ('QUEUED', 'RETRYING')
           AND s.required_labels = ANY (p_allowed)
           AND (s.preferred_worker_id IS NULL OR s.queued_at + p_window <= v_now)
           AND EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'RUNNING')
         ORDER BY s.queued_at, s.id
         LIMIT 1
         FOR UPDATE OF s SKIP LOCKED;
    END IF;
    IF v_id IS NULL THEN
        -- Nothing to take; a worker that is not registered may take nothing at all.
        RETURN jsonb_build_object('closed',
                                  NOT EXISTS (SELECT 1 FROM workers WHERE id = p_worker));
    END IF;
    UPDATE steps SET status = 'IN_PROGRESS', worker_id = p_worker,
                     lease_epoch = lease_epoch + 1, started_at = v_now, ended_at = NULL,
                     lease_granted_at = v_now, lease_expires_at = v_now + p_ttl
     WHERE id = v_id RETURNING * INTO v_step;
    -- Each row read once, with its version (a row variable cannot share an INTO list).
    UPDATE run_state SET event_seq = event_seq + 2 WHERE run_id = v_step.run_id
    RETURNING to_jsonb(run_state), event_seq, xmin::text::bigint
         INTO v_state, v_state_seq, v_state_version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run_state of % missing', v_step.run_id USING ERRCODE = 'no_data_found';
    END IF;
    SELECT to_jsonb(r), r.xmin::text::bigint INTO v_run, v_run_version
      FROM runs r WHERE r.id = v_step.run_id;
    INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
    VALUES (p_event_ids[1], v_step.run_id, v_state_seq - 1, v_id, 'LEASE_GRANTED',
            jsonb_build_object('step_id', v_id, 'worker_id', p_worker,
                               'epoch', v_step.lease_epoch,
                               'expires_at', to_char(timestamp '1970-01-01'
                                   + v_step.lease_expires_at * interval '1 millisecond',
                                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text, v_now),
           (p_event_ids[2], v_step.run_id, v_state_seq, v_id, 'STEP_STARTED',
            jsonb_build_object('step_id', v_id, 'phase', v_step.phase,
                               'attempt', v_step.attempt, 'worker_id', p_worker,
                               'epoch', v_step.lease_epoch)::text, v_now);
    RETURN jsonb_build_object('step', to_jsonb(v_step), 'lease', loopd_lease_of(v_step),
                              'run', v_run, 'state', v_state, 'now', v_now,
                              'run_version', v_run_version, 'state_version', v_state_version,
                              'inputs', loopd_decision_inputs(v_step, p_phases));
END $$;

CREATE OR REPLACE FUNCTION loopd_complete_snapshot(p_step TEXT, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_step steps;
BEGIN
    SELECT * INTO v_step FROM steps WHERE id = p_step;
    IF NOT FOUND THEN
        RETURN '{}'::jsonb;
    END IF;
    -- The run and its state read once each, with their versions (NULL when gone).
    RETURN (SELECT jsonb_build_object(
        'now', loopd_now_ms(),
        'step', to_jsonb(v_step) - 'prompt',
        'lease', loopd_lease_of(v_step),
        'run', to_jsonb(r), 'run_version', r.xmin::text::bigint,
        'state', to_jsonb(rs), 'state_version', rs.xmin::text::bigint,
        'inputs', loopd_decision_inputs(v_step, p_phases))
      FROM (SELECT 1) one
      LEFT JOIN runs r ON r.id = v_step.run_id
      LEFT JOIN run_state rs ON rs.run_id = v_step.run_id);
END $$;

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
                  WHERE w.id = p_worker AND w.status IN ('draining', 'revoked')) THEN
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

CREATE OR REPLACE FUNCTION loopd_complete_and_claim_many(p_items JSONB, p_phases TEXT[])
RETURNS JSONB LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
-- Every join here goes from a few items to rows by their keys. The planner, guessing a hundred
-- items, would hash whole tables instead (the steps, whose dead rows pile up between vacuums
-- at two a cycle: the cycle made inside Postgres was slower batched than alone).
SET enable_hashjoin = off
SET enable_mergejoin = off AS $$
DECLARE
    v_now BIGINT := loopd_now_ms();
    -- The items, taken apart once: every statement below reads them from this array, each
    -- element by reference, where each used to take the whole JSON array apart again (every
    -- element copied out, for each of ten statements).
    v_items JSONB[] := ARRAY(SELECT jsonb_array_elements(p_items));
    v_set INT[];
    v_ok INT[];
    replies JSONB[] := array_fill(NULL::jsonb, ARRAY[jsonb_array_length(p_items)]);
    r RECORD;
BEGIN
    -- The direct completions, each of a run no other item of the batch completes.
    SELECT coalesce(array_agg(d.n), '{}') INTO v_set FROM (
        SELECT e.it, e.n, count(*) OVER (PARTITION BY e.it #>> '{run,id}') AS per_run
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n)) d
     WHERE d.per_run = 1
       AND (d.it #>> '{queued,preferred_worker_id}') = (d.it ->> 'worker')
       AND d.it #>> '{run,status}' = 'RUNNING'
       AND (d.it #>> '{queued,required_labels}')
           IN (SELECT jsonb_array_elements_text(d.it -> 'allowed'))
       AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = d.it ->> 'worker'
                          AND w.status IN ('draining', 'revoked'));
    -- Those whose checks hold, their rows locked.
    SELECT coalesce(array_agg(n), '{}') INTO v_ok FROM (
        SELECT e.n
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n)
          JOIN steps s ON s.id = e.it ->> 'step'
          JOIN runs ru ON ru.id = e.it #>> '{run,id}'
          JOIN run_state x ON x.run_id = ru.id
         WHERE e.n = ANY (v_set)
           AND s.lease_expires_at IS NOT NULL
           AND s.worker_id IS NOT DISTINCT FROM e.it ->> 'worker'
           AND s.lease_epoch IS NOT DISTINCT FROM (e.it ->> 'epoch')::bigint
           -- The run and its state as the decision read them: their rows' versions.
           AND ru.xmin::text::bigint = (e.it #>> '{run,version}')::bigint
           AND x.xmin::text::bigint = (e.it #>> '{state_before,version}')::bigint
           AND NOT EXISTS (SELECT 1 FROM steps o WHERE o.run_id = ru.id
                              AND o.id <> s.id
                              AND o.status IN ('QUEUED', 'RETRYING', 'IN_PROGRESS'))
         ORDER BY ru.id
           FOR UPDATE OF s, ru, x) c;

    IF cardinality(v_ok) > 0 THEN
        UPDATE steps SET status = d.status, settled = d.settled, ended_at = v_now,
                         exit_code = d.exit_code, output_path = d.output_path,
                         output_tail = d.output_tail, runner_notes = d.runner_notes,
                         completion_detected = d.completion_detected,
                         failure_reason = d.failure_reason,
                         completion_digest = d.completion_digest,
                         lease_granted_at = NULL, lease_expires_at = NULL
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               jsonb_populate_record(NULL::steps, e.it -> 'done') AS d
         WHERE e.n = ANY (v_ok) AND steps.id = e.it ->> 'step';
        INSERT INTO steps
        SELECT q.* FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               jsonb_populate_record(NULL::steps, e.it -> 'queued' || jsonb_build_object(
                   'status', 'IN_PROGRESS', 'worker_id', e.it ->> 'worker',
                   'lease_epoch', (e.it #>> '{queued,lease_epoch}')::bigint + 1,
                   'queued_at', v_now, 'started_at', v_now, 'lease_granted_at', v_now,
                   'lease_expires_at', v_now + (e.it ->> 'ttl')::bigint)) AS q
         WHERE e.n = ANY (v_ok);
        UPDATE run_state SET iterations_done = t.iterations_done,
                             verify_failures = t.verify_failures,
                             review_failures = t.review_failures,
                             watchdog_rewrites = t.watchdog_rewrites,
                             pending_prompt = t.pending_prompt, runner_notes = t.runner_notes,
                             last_worker_id = t.last_worker_id,
                             checkpoint_name = t.checkpoint_name,
                             checkpoint_head = t.checkpoint_head,
                             finishing = t.finishing, event_seq = t.event_seq + 2
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               jsonb_populate_record(NULL::run_state, e.it -> 'state') AS t
         WHERE e.n = ANY (v_ok) AND run_state.run_id = e.it #>> '{run,id}';
        -- The completion's own events, then LEASE_GRANTED and STEP_STARTED after them.
        INSERT INTO events (id, run_id, run_seq, step_id, event_type, payload_json, created_at)
        SELECT v.id, v.run_id, v.run_seq, v.step_id, v.event_type, v.payload_json, v_now
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               jsonb_populate_recordset(NULL::events, e.it -> 'events') AS v
         WHERE e.n = ANY (v_ok)
        UNION ALL
        SELECT g.id, e.it #>> '{run,id}', (e.it #>> '{state,event_seq}')::bigint + g.k,
               e.it #>> '{queued,id}', g.event_type, g.payload, v_now
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               LATERAL (SELECT (e.it #>> '{queued,lease_epoch}')::bigint + 1 AS epoch) p,
               LATERAL (VALUES
                   (1, e.it #>> '{event_ids,0}', 'LEASE_GRANTED',
                    jsonb_build_object('step_id', e.it #>> '{queued,id}',
                        'worker_id', e.it ->> 'worker', 'epoch', p.epoch,
                        'expires_at', to_char(timestamp '1970-01-01'
                            + (v_now + (e.it ->> 'ttl')::bigint) * interval '1 millisecond',
                            'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text),
                   (2, e.it #>> '{event_ids,1}', 'STEP_STARTED',
                    jsonb_build_object('step_id', e.it #>> '{queued,id}',
                        'phase', e.it #>> '{queued,phase}',
                        'attempt', (e.it #>> '{queued,attempt}')::int,
                        'worker_id', e.it ->> 'worker', 'epoch', p.epoch)::text))
                   AS g(k, id, event_type, payload)
         WHERE e.n = ANY (v_ok);
    END IF;

    -- The answers, in the items' order; the rest one by one.
    FOR r IN SELECT e.it, e.n::int AS n
               FROM unnest(v_items) WITH ORDINALITY AS e(it, n) LOOP
        IF r.n = ANY (v_ok) THEN
            replies[r.n] := jsonb_build_object('applied', true, 'claim', jsonb_build_object(
                'direct', true, 'now', v_now,
                'state_version', (SELECT x.xmin::text::bigint FROM run_state x
                                   WHERE x.run_id = r.it #>> '{run,id}'),
                'watch', CASE WHEN r.it #>> '{queued,phase}' = 'verification'
                                   AND NOT (r.it #>> '{queued,is_final}')::boolean
                              THEN loopd_watch_inputs(r.it #>> '{run,id}') END));
        ELSIF r.n = ANY (v_set) THEN
            replies[r.n] := jsonb_build_object('applied', false);
        ELSE
            replies[r.n] := loopd_complete_and_claim(
                r.it ->> 'step', r.it ->> 'worker', (r.it ->> 'epoch')::bigint, r.it -> 'run',
                r.it -> 'state_before', r.it -> 'done', NULLIF(r.it -> 'queued', 'null'::jsonb),
                r.it -> 'state', r.it -> 'events',
                ARRAY(SELECT jsonb_array_elements_text(r.it -> 'allowed')),
                (r.it ->> 'ttl')::bigint, (r.it ->> 'window')::bigint,
                ARRAY(SELECT jsonb_array_elements_text(r.it -> 'event_ids')), p_phases);
        END IF;
    END LOOP;
    RETURN to_jsonb(replies);
END $$;
