-- A step's lease as the `leases` view shows it (NULL when the step holds none), as JSON. A
-- lease is two columns of its step (`lease_granted_at`, `lease_expires_at`) with the step's
-- worker, epoch and attempt.
-- Called by: loopd_claim, loopd_complete_snapshot.
-- History: migration 2026-12-06-000012_leases_in_steps.
CREATE OR REPLACE FUNCTION loopd_lease_of(p_step steps) RETURNS JSONB LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_step.lease_expires_at IS NOT NULL THEN jsonb_build_object(
        'step_id', p_step.id, 'worker_id', p_step.worker_id, 'epoch', p_step.lease_epoch,
        'granted_at', p_step.lease_granted_at, 'expires_at', p_step.lease_expires_at,
        'attempt', p_step.attempt) END
$$;
