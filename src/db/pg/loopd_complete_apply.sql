-- loopd_complete_apply_at at the database's time now.
-- Called by: `fast::complete_apply` (src/db/fast.rs), loopd_complete_and_claim.
-- History: migrations 2026-11-28-000003_fast_paths, 2026-11-30-000005_direct_lease,
-- 2026-12-01-000006_direct_reply.
CREATE OR REPLACE FUNCTION loopd_complete_apply(p_step TEXT, p_worker TEXT, p_epoch BIGINT,
                                                p_run JSONB, p_state_before JSONB,
                                                p_done JSONB, p_queued JSONB, p_state JSONB,
                                                p_events JSONB)
RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN loopd_complete_apply_at(loopd_now_ms(), p_step, p_worker, p_epoch, p_run,
                                   p_state_before, p_done, p_queued, p_state, p_events);
END $$;
