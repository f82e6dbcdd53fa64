-- Delivery fencing, process identity, recovery notices that reach every front, and the server's secret.

-- Generation finished, the images wait for their delivery: such a job no longer counts against the
-- global queue bound (it still counts per user), and ready_count says how many images it made.
ALTER TABLE jobs ADD COLUMN ready_at REAL;
ALTER TABLE jobs ADD COLUMN ready_count INTEGER;
-- A front claimed the delivery: the images may be out, so recovery charges such a job, never refunds it.
ALTER TABLE jobs ADD COLUMN delivering_at REAL;
-- A front told the user that recovery refunded the job (any process's front may do it, once).
ALTER TABLE jobs ADD COLUMN notified_at REAL;
UPDATE jobs SET notified_at = finished_at WHERE error_kind = 'interrupted';
CREATE INDEX jobs_unnotified ON jobs(finished_at) WHERE error_kind = 'interrupted' AND notified_at IS NULL;

-- boot id, pid namespace, pid and start time: two containers that are both PID 1 differ here.
ALTER TABLE instances ADD COLUMN ident TEXT;

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO secrets (name, value) VALUES ('idempotency', lower(hex(randomblob(32))));
