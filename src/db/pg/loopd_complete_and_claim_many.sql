-- Completions that reach the controller together, written in one statement and one
-- transaction: `p_items` holds each completion's arguments to loopd_complete_and_claim as a
-- JSON object (keys as the parameters, without `p_`; keys whose value is null may be left
-- out), and the answer holds each one's reply in the same order.
--
-- The completions that lease their worker the step they queue (the direct path of
-- loopd_complete_and_claim, nearly every completion of a busy pool), each of a run no other
-- item completes, are checked with one locking statement and written with one statement per
-- table (those whose step takes a new slot of an agent account as far as the account has room:
-- its row locked and its steps in flight counted once for the batch). Each is checked exactly
-- as alone: its lease still its worker's at its epoch, its run and state at the versions its
-- decision read, no other step of the run in flight (rows locked
-- in the order the lone path locks them: step, then run and state, runs in the order of their
-- ids); what it writes is what the lone path writes. One that fails its checks is answered
-- {"applied": false} and writes nothing. The other items (no direct lease, or a second
-- completion of the same run, as when a worker repeats a request) go through
-- loopd_complete_and_claim one by one afterwards, so they see what the set wrote. Should
-- anything raise an error, the whole batch rolls back and the controller writes each
-- completion alone.
-- Called by: `batch` (src/db/batch.rs).
-- History: migrations 2026-12-02-000007_batched_completions, 2026-12-04-000010_set_based_batches,
-- 2026-12-05-000011_items_expanded_once, 2026-12-06-000012_leases_in_steps,
-- 2026-12-07-000013_versions_not_rows, 2026-12-08-000014_queued_by_columns,
-- 2026-12-10-323001_api_accounts (and, without a migration, the batch's room of an account).
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
    -- Agent accounts paused or over their limit (a halved one): their steps are not leased
    -- directly here.
    v_over TEXT[] := ARRAY(SELECT a.account FROM api_accounts a
                            WHERE a.pause_until > v_now
                               OR a.concurrency_limit < loopd_account_in_flight(a.account));
    -- Direct completions whose queued step would take a new slot of its agent account.
    v_new INT[];
    v_limit INT;
    v_paused BOOLEAN;
    v_room BIGINT;
    v_ok INT[];
    replies JSONB[] := array_fill(NULL::jsonb, ARRAY[jsonb_array_length(p_items)]);
    r RECORD;
BEGIN
    -- The direct completions, each of a run no other item of the batch completes, whose
    -- queued step runs no agent or is of an account neither paused nor over its limit: in
    -- v_set those that take the slot of the finished one (same account) or need none, in
    -- v_new those that would take a new slot.
    SELECT coalesce(array_agg(d.n) FILTER (WHERE NOT d.new_slot), '{}'),
           coalesce(array_agg(d.n) FILTER (WHERE d.new_slot), '{}')
      INTO v_set, v_new FROM (
        SELECT e.it, e.n, count(*) OVER (PARTITION BY e.it #>> '{run,id}') AS per_run,
               e.it #>> '{queued,account}' IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM steps f WHERE f.id = e.it ->> 'step'
                                  AND f.account = e.it #>> '{queued,account}') AS new_slot
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n)) d
     WHERE d.per_run = 1
       AND (d.it #>> '{queued,preferred_worker_id}') = (d.it ->> 'worker')
       AND d.it #>> '{run,status}' = 'RUNNING'
       AND (d.it #>> '{queued,required_labels}')
           IN (SELECT jsonb_array_elements_text(d.it -> 'allowed'))
       AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = d.it ->> 'worker'
                          AND w.status IN ('draining', 'revoked'))
       AND (d.it #>> '{queued,account}' IS NULL
            OR d.it #>> '{queued,account}' <> ALL (v_over));
    -- Those that take a new slot join the set as far as their account has room: its row
    -- locked (accounts in order; the claim and the lone completion lock one account, before
    -- any step of theirs that this statement locks), its steps in flight counted once for the
    -- batch; the rest go alone below (loopd_account_has_slot). No row: no limit.
    FOR r IN SELECT DISTINCT e.it #>> '{queued,account}' AS account
               FROM unnest(v_items) WITH ORDINALITY AS e(it, n)
              WHERE e.n = ANY (v_new) ORDER BY 1 LOOP
        SELECT a.concurrency_limit, coalesce(a.pause_until > v_now, false)
          INTO v_limit, v_paused FROM api_accounts a WHERE a.account = r.account FOR UPDATE;
        IF NOT FOUND THEN
            v_room := NULL;
        ELSIF v_paused THEN
            v_room := 0;
        ELSE
            v_room := greatest(v_limit - loopd_account_in_flight(r.account), 0);
        END IF;
        v_set := v_set || ARRAY(SELECT e.n::int FROM unnest(v_items) WITH ORDINALITY AS e(it, n)
                                 WHERE e.n = ANY (v_new)
                                   AND e.it #>> '{queued,account}' = r.account
                                 ORDER BY e.n LIMIT v_room);
    END LOOP;
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
        -- The queued step, leased at once: its columns as sent, the lease's set here (not
        -- by merging them into the sent object, which copied it whole and sorted its keys
        -- again, prompt and all, for each item).
        INSERT INTO steps (id, run_id, seq, phase, status, attempt, infra_attempts, is_final,
                           settled, queued_at, started_at, ended_at, exit_code, prompt,
                           prompt_path, output_path, output_tail, runner_notes, output_size,
                           completion_detected, worker_id, lease_epoch, required_labels,
                           preferred_worker_id, failure_reason, completion_digest,
                           lease_granted_at, lease_expires_at, account)
        SELECT q.id, q.run_id, q.seq, q.phase, 'IN_PROGRESS', q.attempt, q.infra_attempts,
               q.is_final, q.settled, v_now, v_now, q.ended_at, q.exit_code, q.prompt,
               q.prompt_path, q.output_path, q.output_tail, q.runner_notes, q.output_size,
               q.completion_detected, e.it ->> 'worker', q.lease_epoch + 1, q.required_labels,
               q.preferred_worker_id, q.failure_reason, q.completion_digest,
               v_now, v_now + (e.it ->> 'ttl')::bigint, q.account
          FROM unnest(v_items) WITH ORDINALITY AS e(it, n),
               jsonb_populate_record(NULL::steps, e.it -> 'queued') AS q
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
