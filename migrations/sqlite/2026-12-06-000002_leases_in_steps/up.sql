-- A lease is two columns of its step instead of a row of its own (as on Postgres, where this
-- saves two row writes a cycle): the step already has the lease's worker, epoch and attempt.
-- `leases` stays as a read-only view of the leased steps with the table's columns.
ALTER TABLE steps ADD COLUMN lease_granted_at BIGINT;
ALTER TABLE steps ADD COLUMN lease_expires_at BIGINT;
UPDATE steps SET lease_granted_at = l.granted_at, lease_expires_at = l.expires_at,
                 worker_id = l.worker_id, lease_epoch = l.epoch
  FROM leases l WHERE l.step_id = steps.id;
DROP TABLE leases;
CREATE INDEX steps_leased ON steps (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE VIEW leases AS
SELECT id AS step_id, worker_id, lease_epoch AS epoch, lease_granted_at AS granted_at,
       lease_expires_at AS expires_at, attempt
  FROM steps WHERE lease_expires_at IS NOT NULL;
