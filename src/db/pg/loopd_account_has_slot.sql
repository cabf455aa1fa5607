-- Whether the completion of step `p_step` may lease its worker the step it queues for agent
-- account `p_account` at once (the direct path): the account is not paused, and its steps in
-- flight afterwards stay within its limit. A step that follows one of the same account takes
-- that one's slot (nothing to lock: the count does not grow); one that follows a step of
-- another account (or of none) takes a new slot, and locks the account's row first, as
-- loopd_claim does, so that claims of the account take turns across controllers. No row, or
-- no account: no limit.
-- Called by: loopd_complete_and_claim.
-- History: migration 2026-12-10-323001_api_accounts.
CREATE OR REPLACE FUNCTION loopd_account_has_slot(p_account TEXT, p_step TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_now BIGINT := loopd_now_ms();
    v_same BOOLEAN;
BEGIN
    IF p_account IS NULL THEN
        RETURN true;
    END IF;
    v_same := EXISTS (SELECT 1 FROM steps s WHERE s.id = p_step AND s.account = p_account
                         AND s.status = 'IN_PROGRESS');
    IF NOT v_same THEN
        PERFORM 1 FROM api_accounts a WHERE a.account = p_account FOR UPDATE;
    END IF;
    RETURN NOT EXISTS (
        SELECT 1 FROM api_accounts a
         WHERE a.account = p_account
           AND (a.pause_until > v_now
                OR a.concurrency_limit < loopd_account_in_flight(p_account)
                                         + CASE WHEN v_same THEN 0 ELSE 1 END));
END $$;
