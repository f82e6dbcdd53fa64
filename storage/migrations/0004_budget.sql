-- The operator's GPU budget and the relax lane.
-- A job holds its estimated GPU time (milliseconds) against its UTC month from reservation to its
-- end; the settle moves what it really used to the month's spend, a refund gives the hold back.
-- budget_months.held_ms and spent_ms mirror sums over the jobs, written in the same transaction.

ALTER TABLE jobs ADD COLUMN relax INTEGER NOT NULL DEFAULT 0;            -- 1: a relax-lane job (no credits)
ALTER TABLE jobs ADD COLUMN budget_hold_ms INTEGER NOT NULL DEFAULT 0;   -- estimated GPU time held
ALTER TABLE jobs ADD COLUMN budget_spent_ms INTEGER NOT NULL DEFAULT 0;  -- GPU time charged at the end
CREATE INDEX jobs_relax ON jobs(user_id, day) WHERE relax = 1;

CREATE TABLE budget_months (
    month      TEXT PRIMARY KEY,                                   -- YYYY-MM (UTC)
    ceiling_ms INTEGER CHECK (ceiling_ms IS NULL OR ceiling_ms >= 0), -- set by an admin; NULL: the setting
    spent_ms   INTEGER NOT NULL DEFAULT 0 CHECK (spent_ms >= 0),
    held_ms    INTEGER NOT NULL DEFAULT 0 CHECK (held_ms >= 0)
);
