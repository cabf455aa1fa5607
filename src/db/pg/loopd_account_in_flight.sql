-- How many steps of agent account `p_account` are in flight (IN_PROGRESS), read through the
-- partial index steps_account_in_flight by a plain index scan, never a bitmap one. A busy
-- account leaves that index full of dead versions of its steps in flight until vacuum; a plain
-- scan marks those it meets dead in the index, so the next look-ups skip them, where a bitmap
-- scan fetches every one of them again on every call (after a 20 s window of the pool bench:
-- 3,321 entries for 30 live steps, 17 ms a count against 0.07 ms).
-- Called by: loopd_claim, loopd_account_has_slot, loopd_complete_and_claim_many.
-- History: first written for the pool bench of 2026-12-07 (no migration: a new function).
CREATE OR REPLACE FUNCTION loopd_account_in_flight(p_account TEXT)
RETURNS BIGINT LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_bitmapscan = off AS $$
BEGIN
    RETURN (SELECT count(*) FROM steps l WHERE l.account = p_account AND l.status = 'IN_PROGRESS');
END $$;
