-- storage/migrations/0004_budget.sql in PostgreSQL's words (before the functions that use them).

ALTER TABLE jobs ADD COLUMN relax INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN budget_hold_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN budget_spent_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_relax ON jobs(user_id, day) WHERE relax = 1;

CREATE TABLE budget_months (
    month      TEXT PRIMARY KEY,
    ceiling_ms BIGINT CHECK (ceiling_ms IS NULL OR ceiling_ms >= 0),
    spent_ms   BIGINT NOT NULL DEFAULT 0 CHECK (spent_ms >= 0),
    held_ms    BIGINT NOT NULL DEFAULT 0 CHECK (held_ms >= 0)
);
