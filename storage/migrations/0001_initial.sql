-- Users, their allowance overrides and bonus credits, the credit ledger, jobs and bans.
-- users.bonus and daily_usage.used mirror sums over the ledger; they are written in the same
-- transaction as the ledger row that changes them, so a reservation is one indexed read.

CREATE TABLE users (
    id              TEXT PRIMARY KEY,          -- platform:id, e.g. discord:123
    daily_allowance INTEGER CHECK (daily_allowance IS NULL OR daily_allowance >= 0),
    bonus           INTEGER NOT NULL DEFAULT 0 CHECK (bonus >= 0),
    created_at      REAL NOT NULL
);

CREATE TABLE daily_usage (
    user_id TEXT NOT NULL REFERENCES users(id),
    day     TEXT NOT NULL,                     -- UTC date, YYYY-MM-DD
    used    INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;

CREATE TABLE instances (
    id           TEXT PRIMARY KEY,             -- one per running process
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL
);

CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,             -- from the platform's event id
    user_id      TEXT NOT NULL REFERENCES users(id),
    request      TEXT NOT NULL,                -- JSON of gateway.request.ImageRequest
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    cost         INTEGER NOT NULL CHECK (cost >= 0),
    day          TEXT NOT NULL,                -- the day whose allowance paid
    daily        INTEGER NOT NULL DEFAULT 0,   -- credits taken from that day's allowance
    bonus        INTEGER NOT NULL DEFAULT 0,   -- credits taken from bonus
    spent        INTEGER NOT NULL DEFAULT 0,   -- credits finally charged
    refunded     INTEGER NOT NULL DEFAULT 0,   -- credits given back
    seed         INTEGER,
    model        TEXT,
    error_kind   TEXT,
    error        TEXT,
    reply        TEXT,                         -- JSON: where the front answers the user
    instance_id  TEXT REFERENCES instances(id),
    gpu_seconds  REAL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL
);
CREATE INDEX jobs_open ON jobs(status) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_user_open ON jobs(user_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_finished ON jobs(finished_at);

CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    job_id     TEXT REFERENCES jobs(id),
    kind       TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'refund', 'grant')),
    credits    INTEGER NOT NULL,               -- credits the row is about (always >= 0 but grants)
    daily      INTEGER NOT NULL DEFAULT 0,     -- change to daily_usage.used of `day`
    bonus      INTEGER NOT NULL DEFAULT 0,     -- change to users.bonus
    day        TEXT,
    note       TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id);
CREATE INDEX ledger_job ON ledger(job_id);

CREATE TABLE bans (
    user_id    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    banned_by  TEXT,
    created_at REAL NOT NULL
);
