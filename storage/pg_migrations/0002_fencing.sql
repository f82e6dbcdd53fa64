-- storage/migrations/0002_fencing.sql in PostgreSQL's words.

ALTER TABLE jobs ADD COLUMN ready_at DOUBLE PRECISION;
ALTER TABLE jobs ADD COLUMN ready_count INTEGER;
ALTER TABLE jobs ADD COLUMN delivering_at DOUBLE PRECISION;
ALTER TABLE jobs ADD COLUMN notified_at DOUBLE PRECISION;
CREATE INDEX jobs_unnotified ON jobs(finished_at) WHERE error_kind = 'interrupted' AND notified_at IS NULL;

ALTER TABLE instances ADD COLUMN ident TEXT;

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- gen_random_uuid() draws on the server's strong random source: two of them are 244 random bits.
INSERT INTO secrets (name, value) VALUES
    ('idempotency', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
