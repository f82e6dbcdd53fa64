-- The tables of storage/migrations/0001_initial.sql, in PostgreSQL's words (same names, same checks).
-- users.bonus and daily_usage.used mirror sums over the ledger, written in the same transaction as
-- the ledger row that changes them.

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    daily_allowance INTEGER CHECK (daily_allowance IS NULL OR daily_allowance >= 0),
    bonus           INTEGER NOT NULL DEFAULT 0 CHECK (bonus >= 0),
    created_at      DOUBLE PRECISION NOT NULL
);

CREATE TABLE daily_usage (
    user_id TEXT NOT NULL REFERENCES users(id),
    day     TEXT NOT NULL,
    used    INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (user_id, day)
);

CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    stopped_at   DOUBLE PRECISION
);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    request      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    cost         INTEGER NOT NULL CHECK (cost >= 0),
    day          TEXT NOT NULL,
    daily        INTEGER NOT NULL DEFAULT 0,
    bonus        INTEGER NOT NULL DEFAULT 0,
    spent        INTEGER NOT NULL DEFAULT 0,
    refunded     INTEGER NOT NULL DEFAULT 0,
    seed         BIGINT,
    model        TEXT,
    error_kind   TEXT,
    error        TEXT,
    reply        TEXT,
    instance_id  TEXT REFERENCES instances(id),
    gpu_seconds  DOUBLE PRECISION,
    created_at   DOUBLE PRECISION NOT NULL,
    started_at   DOUBLE PRECISION,
    finished_at  DOUBLE PRECISION
);
CREATE INDEX jobs_open ON jobs(status) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_user_open ON jobs(user_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_finished ON jobs(finished_at);

CREATE TABLE ledger (
    id         BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    job_id     TEXT REFERENCES jobs(id),
    kind       TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'refund', 'grant')),
    credits    INTEGER NOT NULL,
    daily      INTEGER NOT NULL DEFAULT 0,
    bonus      INTEGER NOT NULL DEFAULT 0,
    day        TEXT,
    note       TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id);
CREATE INDEX ledger_job ON ledger(job_id);

CREATE TABLE bans (
    user_id    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    banned_by  TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
