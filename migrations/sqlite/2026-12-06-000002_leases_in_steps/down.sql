DROP VIEW leases;
CREATE TABLE leases (
    step_id TEXT PRIMARY KEY REFERENCES steps (id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    granted_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempt INTEGER NOT NULL
);
CREATE INDEX leases_expires ON leases (expires_at);
CREATE INDEX leases_worker ON leases (worker_id);
INSERT INTO leases SELECT id, worker_id, lease_epoch, lease_granted_at, lease_expires_at, attempt
  FROM steps WHERE lease_expires_at IS NOT NULL;
DROP INDEX steps_leased;
ALTER TABLE steps DROP COLUMN lease_granted_at;
ALTER TABLE steps DROP COLUMN lease_expires_at;
