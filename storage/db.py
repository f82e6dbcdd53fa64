"""SQLite store for users, quotas, the credit ledger, jobs and bans (aiosqlite, WAL).

Every change of credits is one transaction that writes a ledger row and the counter it moves
(``users.bonus``, ``daily_usage.used``), so balances always equal what the ledger says.
Transactions run as one function on aiosqlite's connection thread under ``BEGIN IMMEDIATE``:
one thread hop per operation, atomic against other coroutines and, through SQLite's write
lock and busy timeout, against other processes sharing the file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

OPEN_STATUSES = ("queued", "running")
BUSY_TIMEOUT_MS = 30_000


class RefusedReason:
    BANNED = "banned"
    CREDITS = "credits"
    USER_QUEUE = "user_queue"
    QUEUE = "queue"


class ReservationRefused(Exception):
    """A job that cannot be accepted; nothing was written."""

    def __init__(
        self,
        reason: str,
        *,
        quota: QuotaState | None = None,
        ban_reason: str = "",
        open_jobs: int = 0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quota = quota
        self.ban_reason = ban_reason
        self.open_jobs = open_jobs


class StoreUnavailable(Exception):
    """The store did not answer (a lock held past the busy timeout, a full disk, I/O errors).

    Nothing of the operation was written; it may be tried again later.
    """


class StoreError(ValueError):
    """An admin change that cannot be made (e.g. taking more bonus than a user has)."""


@dataclass(frozen=True)
class QuotaState:
    user_id: str
    day: str
    allowance: int  # today's daily allowance (override or default)
    used: int  # daily credits used or reserved today
    bonus: int  # bonus credits left (not counting reserved ones)
    reserved: int  # credits held by open jobs
    override: bool  # allowance set by an admin
    unlimited: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.allowance - self.used) + self.bonus


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: str
    request: dict[str, Any]
    status: str
    cost: int
    day: str
    daily: int
    bonus: int
    spent: int
    refunded: int
    seed: int | None
    model: str | None
    error_kind: str | None
    error: str | None
    reply: dict[str, Any] | None
    instance_id: str | None
    gpu_seconds: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    ready_at: float | None = None  # generated; waiting for its delivery
    ready_count: int | None = None  # images made
    delivering_at: float | None = None  # a front claimed the delivery: the images may be out
    notified_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class NewJob:
    """A job to accept, with the limits it is accepted under."""

    job_id: str
    user_id: str
    request: dict[str, Any]
    cost: int
    day: str
    default_allowance: int
    unlimited: bool
    max_user_open: int
    max_open: int
    instance_id: str | None
    reply: dict[str, Any] | None
    now: float


@dataclass(frozen=True)
class Reservation:
    job: JobRecord
    created: bool  # False: the job id was seen before; nothing was charged again
    position: int  # open jobs ahead of this one, across every process
    quota: QuotaState | None


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    ident: str | None = None


_JOB_COLUMNS = (
    "id, user_id, request, status, cost, day, daily, bonus, spent, refunded, seed, model, "
    "error_kind, error, reply, instance_id, gpu_seconds, created_at, started_at, finished_at, "
    "ready_at, ready_count, delivering_at, notified_at"
)
#: Open jobs that still wait for the GPU: the global queue bound counts these (not finished images
#: waiting for their download).
_WAITING = "status IN ('queued', 'running') AND ready_at IS NULL"


def _job(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    values = list(row)
    values[2] = json.loads(values[2])
    values[14] = json.loads(values[14]) if values[14] else None
    return JobRecord(*values)


def migrations() -> list[tuple[int, str, str]]:
    """Numbered ``NNNN_name.sql`` files shipped in ``storage/migrations``."""
    found = []
    for entry in resources.files("storage.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


class Database:
    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        group_commit: bool = True,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self._conn = conn
        self.path = path
        self.group_commit = group_commit  # off: one transaction per write (the benchmark's baseline)
        self.busy_timeout_ms = busy_timeout_ms
        self._batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flushing: set[asyncio.Future[Any]] = set()

    @classmethod
    async def open(
        cls, path: str | Path, *, group_commit: bool = True, busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> Database:
        """Open (and migrate) the file; ``busy_timeout_ms`` is how long a write waits for a lock."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(str(path), isolation_level=None, timeout=busy_timeout_ms / 1000)
        db = cls(conn, path, group_commit=group_commit, busy_timeout_ms=busy_timeout_ms)
        try:
            await db._run(_configure, busy_timeout_ms)
            await db._run(_migrate)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on aiosqlite's connection thread."""
        raw: sqlite3.Connection = self._conn._conn
        try:
            result: T = await self._conn._execute(fn, raw, *args)  # type: ignore[no-untyped-call]
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the database did not answer: {exc}") from exc
        return result

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a write transaction, committed together with the writes queued beside it.

        Group commit: writes that arrive while one batch runs go in the next, each in its own
        savepoint, so one failing (a refused reservation) leaves the others whole, and a busy
        gateway pays one thread hop and one commit per batch instead of per write.
        """
        if not self.group_commit:
            ok, value = (await self._run(_run_batch, [(fn, args)]))[0]
            if not ok:
                raise _unavailable(value)
            return value  # type: ignore[no-any-return]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((fn, args, future))
        if not self._flushing:
            self._flush()  # nothing in flight: go now; writes arriving meanwhile form the next batch
        result: T = await future
        return result

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return

        def deliver(task: asyncio.Future[list[tuple[bool, Any]]]) -> None:
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            for index, (_, _, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    ok, value = task.result()[index]
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(_unavailable(value))

        task = asyncio.ensure_future(self._run(_run_batch, [(fn, args) for fn, args, _ in batch]))  # noqa: RUF006 (kept in _flushing)
        self._flushing.add(task)
        task.add_done_callback(deliver)
        task.add_done_callback(self._next_batch)

    def _next_batch(self, task: asyncio.Future[Any]) -> None:
        self._flushing.discard(task)
        if self._batch:
            self._flush()

    # --- jobs and credits -------------------------------------------------------------

    async def reserve(self, job: NewJob) -> Reservation:
        """Hold ``job.cost`` credits for a new job, or return the job this id already made."""
        return await self._write(_reserve, job)

    async def mark_running(self, job_id: str, now: float) -> bool:
        """Queued -> running; False when the job is no longer queued (recovered by another process)."""
        return await self._write(_mark_running, job_id, now)

    async def mark_ready(self, job_id: str, count: int, *, instance_id: str | None, now: float) -> bool:
        """The images are made and wait for their delivery (they leave the global queue bound)."""
        return await self._write(_mark_ready, job_id, count, instance_id, now)

    async def claim_delivery(self, job_id: str, *, instance_id: str | None, now: float) -> bool:
        """The fence before a front posts images: True only while the job is open and this
        process's. From then on recovery charges the job (the images may be out), never refunds it."""
        return await self._write(_claim_delivery, job_id, instance_id, now)

    async def settle(
        self,
        job_id: str,
        *,
        delivered: int,
        seed: int | None,
        model: str | None,
        gpu_seconds: float | None,
        now: float,
        note: str = "",
        instance_id: str | None = None,
    ) -> JobRecord | None:
        """Charge ``delivered`` credits and give the rest of the reservation back.

        ``None`` when nothing changed: the job is closed already, or (with ``instance_id``) it is
        not that process's. A front delivers nothing for which this returned ``None``.
        """
        return await self._write(_settle, job_id, delivered, seed, model, gpu_seconds, now, note, instance_id)

    async def refund(
        self, job_id: str, *, error_kind: str, error: str, now: float, gpu_seconds: float | None = None
    ) -> JobRecord | None:
        """Fail an open job and return its credits; ``None`` when it was already closed."""
        return await self._write(_refund, job_id, error_kind, error, now, gpu_seconds)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._run(_get_job, job_id)

    async def open_jobs(self, instance_ids: list[str] | None = None) -> list[JobRecord]:
        return await self._run(_open_jobs, instance_ids)

    async def count_waiting(self) -> int:
        """Open jobs across every process that still wait for the GPU (what the queue bound counts)."""
        return await self._run(
            lambda c: int(c.execute(f"SELECT COUNT(*) FROM jobs WHERE {_WAITING}").fetchone()[0])
        )

    async def take_notices(self, prefix: str, now: float, limit: int = 100) -> list[JobRecord]:
        """Jobs of ``prefix`` users (``discord:``) that recovery refunded and nobody told yet.

        Taking them marks them told, in one transaction: whichever process's front takes a notice,
        takes it alone.
        """
        return await self._write(_take_notices, prefix, now, limit)

    async def secret(self, name: str) -> str:
        """A random secret made once per store (e.g. to key idempotency ids)."""
        return await self._run(
            lambda c: str(c.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0])
        )

    # --- quota and admin --------------------------------------------------------------

    async def quota(self, user_id: str, *, day: str, default_allowance: int) -> QuotaState:
        return await self._run(_quota, user_id, day, default_allowance)

    async def set_allowance(self, user_id: str, allowance: int | None, *, now: float) -> None:
        await self._write(_set_allowance, user_id, allowance, now)

    async def grant(self, user_id: str, credits: int, *, by: str, now: float) -> int:
        """Add (or, negative, take back) bonus credits; returns the new bonus balance."""
        return await self._write(_grant, user_id, credits, by, now)

    async def ban(self, user_id: str, reason: str, *, by: str, now: float) -> None:
        await self._write(_ban, user_id, reason, by, now)

    async def unban(self, user_id: str) -> bool:
        return await self._write(_unban, user_id)

    async def stats(self, *, day: str, since: float) -> dict[str, Any]:
        return await self._run(_stats, day, since)

    async def ledger(self, user_id: str | None = None) -> list[dict[str, Any]]:
        return await self._run(_ledger_rows, user_id)

    async def check_ledger(self) -> list[str]:
        """Every place where a stored balance differs from the ledger's sum (empty: all agree)."""
        return await self._run(_check_ledger)

    async def integrity_check(self) -> str:
        return await self._run(lambda c: c.execute("PRAGMA integrity_check").fetchone()[0])

    # --- process instances (crash recovery) -------------------------------------------

    async def register_instance(
        self, instance_id: str, *, host: str, pid: int, now: float, ident: str | None = None
    ) -> None:
        await self._write(_register_instance, instance_id, host, pid, now, ident)

    async def heartbeat(self, instance_id: str, now: float) -> None:
        await self._run(
            lambda c: c.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now, instance_id))
        )

    async def stop_instance(self, instance_id: str, now: float) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE instances SET stopped_at = ?, heartbeat_at = ? WHERE id = ?",
                (now, now, instance_id),
            )
        )

    async def instances(self) -> list[InstanceRecord]:
        return await self._run(
            lambda c: [
                InstanceRecord(*row)
                for row in c.execute(
                    "SELECT id, host, pid, started_at, heartbeat_at, stopped_at, ident FROM instances"
                )
            ]
        )


# --- synchronous bodies, run on the connection thread ------------------------------------


def _unavailable(exc: Exception) -> Exception:
    """A write's own error, with the store's failures (locks, disk) told apart from refusals."""
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"the database did not answer: {exc}")
    return exc


def _configure(c: sqlite3.Connection, busy_timeout_ms: int) -> None:
    c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # Switching to WAL takes an exclusive lock without waiting on the busy timeout: when several
    # processes open a new file at once, the losers retry until the winner has switched it.
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            c.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    c.execute("PRAGMA synchronous = NORMAL")
    c.execute("PRAGMA foreign_keys = ON")


def _migrate(c: sqlite3.Connection) -> None:
    c.execute("BEGIN IMMEDIATE")
    try:
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in c.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in applied:
                continue
            for statement in _split_sql(sql):
                c.execute(statement)
            c.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (executescript would commit our transaction)."""
    statements, current = [], []
    for line in sql.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        current.append(stripped)
        candidate = "\n".join(current)
        if stripped.endswith(";") and sqlite3.complete_statement(candidate):
            statements.append(candidate)
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


def _run_batch(
    c: sqlite3.Connection, batch: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` around the batch, a savepoint around each write."""
    results: list[tuple[bool, Any]] = []
    c.execute("BEGIN IMMEDIATE")
    try:
        for fn, args in batch:
            c.execute("SAVEPOINT write")
            try:
                results.append((True, fn(c, *args)))
            except Exception as exc:
                c.execute("ROLLBACK TO write")
                results.append((False, exc))
            c.execute("RELEASE write")
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    return results


def _ensure_user(c: sqlite3.Connection, user_id: str, now: float) -> None:
    c.execute("INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)", (user_id, now))


def _quota_in_tx(c: sqlite3.Connection, user_id: str, day: str, default_allowance: int) -> QuotaState:
    row = c.execute(
        "SELECT u.daily_allowance, u.bonus, COALESCE(d.used, 0), "
        "(SELECT COALESCE(SUM(cost), 0) FROM jobs j "
        " WHERE j.user_id = u.id AND j.status IN ('queued', 'running')) "
        "FROM users u LEFT JOIN daily_usage d ON d.user_id = u.id AND d.day = ? WHERE u.id = ?",
        (day, user_id),
    ).fetchone()
    if row is None:
        return QuotaState(user_id, day, default_allowance, 0, 0, 0, False)
    override, bonus, used, reserved = row
    allowance = default_allowance if override is None else override
    return QuotaState(user_id, day, allowance, used, bonus, reserved, override is not None)


def _reserve(c: sqlite3.Connection, new: NewJob) -> Reservation:
    row = c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (new.job_id,)).fetchone()
    if row is not None:
        job = _job(row)
        position = _position(c, job)
        return Reservation(job, False, position, None)
    ban = c.execute("SELECT reason FROM bans WHERE user_id = ?", (new.user_id,)).fetchone()
    if ban is not None:
        raise ReservationRefused(RefusedReason.BANNED, ban_reason=ban[0])
    open_total = c.execute(f"SELECT COUNT(*) FROM jobs WHERE {_WAITING}").fetchone()[0]
    if not new.unlimited:
        user_open = c.execute(
            "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN ('queued', 'running')",
            (new.user_id,),
        ).fetchone()[0]
        if user_open >= new.max_user_open:
            raise ReservationRefused(RefusedReason.USER_QUEUE, open_jobs=user_open)
    if open_total >= new.max_open:
        raise ReservationRefused(RefusedReason.QUEUE, open_jobs=open_total)
    _ensure_user(c, new.user_id, new.now)
    quota = _quota_in_tx(c, new.user_id, new.day, new.default_allowance)
    if new.unlimited:
        daily = bonus = 0
    else:
        if quota.remaining < new.cost:
            raise ReservationRefused(RefusedReason.CREDITS, quota=quota)
        daily = min(new.cost, max(0, quota.allowance - quota.used))
        bonus = new.cost - daily
    c.execute(
        "INSERT INTO jobs (id, user_id, request, status, cost, day, daily, bonus, seed, reply, "
        "instance_id, created_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.job_id,
            new.user_id,
            json.dumps(new.request),
            new.cost,
            new.day,
            daily,
            bonus,
            new.request.get("seed"),
            json.dumps(new.reply) if new.reply is not None else None,
            new.instance_id,
            new.now,
        ),
    )
    c.execute(
        "INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at) "
        "VALUES (?, ?, 'reserve', ?, ?, ?, ?, ?, ?)",
        (
            new.user_id,
            new.job_id,
            new.cost,
            daily,
            -bonus,
            new.day,
            "unlimited" if new.unlimited else None,
            new.now,
        ),
    )
    if daily:
        c.execute(
            "INSERT INTO daily_usage (user_id, day, used) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id, day) DO UPDATE SET used = used + excluded.used",
            (new.user_id, new.day, daily),
        )
    if bonus:
        c.execute("UPDATE users SET bonus = bonus - ? WHERE id = ?", (bonus, new.user_id))
    job = _job(c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (new.job_id,)).fetchone())
    after = QuotaState(
        new.user_id,
        new.day,
        quota.allowance,
        quota.used + daily,
        quota.bonus - bonus,
        quota.reserved + new.cost,
        quota.override,
        new.unlimited,
    )
    return Reservation(job, True, open_total, after)


def _position(c: sqlite3.Connection, job: JobRecord) -> int:
    if not job.is_open:
        return 0
    return int(
        c.execute(
            f"SELECT COUNT(*) FROM jobs WHERE {_WAITING} AND created_at < ?",
            (job.created_at,),
        ).fetchone()[0]
    )


def _mark_running(c: sqlite3.Connection, job_id: str, now: float) -> bool:
    cur = c.execute(
        "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
        (now, job_id),
    )
    return cur.rowcount == 1


def _mark_ready(c: sqlite3.Connection, job_id: str, count: int, instance_id: str | None, now: float) -> bool:
    cur = c.execute(
        "UPDATE jobs SET ready_at = ?, ready_count = ? WHERE id = ? AND status = 'running' "
        "AND instance_id IS ?",
        (now, count, job_id, instance_id),
    )
    return cur.rowcount == 1


def _claim_delivery(c: sqlite3.Connection, job_id: str, instance_id: str | None, now: float) -> bool:
    cur = c.execute(
        "UPDATE jobs SET delivering_at = COALESCE(delivering_at, ?) WHERE id = ? "
        "AND status IN ('queued', 'running') AND instance_id IS ?",
        (now, job_id, instance_id),
    )
    return cur.rowcount == 1


def _take_notices(c: sqlite3.Connection, prefix: str, now: float, limit: int) -> list[JobRecord]:
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = c.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE error_kind = 'interrupted' AND notified_at IS NULL "
        "AND user_id LIKE ? ESCAPE '\\' ORDER BY finished_at LIMIT ?",
        (pattern, limit),
    ).fetchall()
    jobs = [_job(r) for r in rows]
    c.executemany("UPDATE jobs SET notified_at = ? WHERE id = ?", [(now, job.id) for job in jobs])
    return jobs


def _give_back(c: sqlite3.Connection, job: JobRecord, credits: int, now: float, note: str) -> None:
    """Refund ``credits`` of a job's reservation: bonus first (it never expires), then daily."""
    if credits <= 0:
        return
    bonus = min(credits, job.bonus)
    daily = min(credits - bonus, job.daily)
    c.execute(
        "INSERT INTO ledger (user_id, job_id, kind, credits, daily, bonus, day, note, created_at) "
        "VALUES (?, ?, 'refund', ?, ?, ?, ?, ?, ?)",
        (job.user_id, job.id, credits, -daily, bonus, job.day, note, now),
    )
    if daily:
        c.execute(
            "UPDATE daily_usage SET used = used - ? WHERE user_id = ? AND day = ?",
            (daily, job.user_id, job.day),
        )
    if bonus:
        c.execute("UPDATE users SET bonus = bonus + ? WHERE id = ?", (bonus, job.user_id))


def _settle(
    c: sqlite3.Connection,
    job_id: str,
    delivered: int,
    seed: int | None,
    model: str | None,
    gpu_seconds: float | None,
    now: float,
    note: str,
    instance_id: str | None,
) -> JobRecord | None:
    row = c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or not _job(row).is_open:
        return None
    job = _job(row)
    if instance_id is not None and job.instance_id != instance_id:
        return None  # fenced: another process took this job over
    spent = max(0, min(delivered, job.cost))
    c.execute(
        "INSERT INTO ledger (user_id, job_id, kind, credits, day, note, created_at) "
        "VALUES (?, ?, 'settle', ?, ?, ?, ?)",
        (job.user_id, job.id, spent, job.day, note or None, now),
    )
    _give_back(c, job, job.cost - spent, now, note or "not delivered")
    c.execute(
        "UPDATE jobs SET status = 'succeeded', spent = ?, refunded = ?, seed = COALESCE(?, seed), "
        "model = ?, gpu_seconds = ?, finished_at = ? WHERE id = ?",
        (spent, job.cost - spent, seed, model, gpu_seconds, now, job_id),
    )
    return _job(c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _refund(
    c: sqlite3.Connection,
    job_id: str,
    error_kind: str,
    error: str,
    now: float,
    gpu_seconds: float | None,
) -> JobRecord | None:
    row = c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or not _job(row).is_open:
        return None
    job = _job(row)
    _give_back(c, job, job.cost, now, error_kind)
    c.execute(
        "UPDATE jobs SET status = 'failed', refunded = cost, error_kind = ?, error = ?, "
        "gpu_seconds = ?, finished_at = ? WHERE id = ?",
        (error_kind, error, gpu_seconds, now, job_id),
    )
    return _job(c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _get_job(c: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(row) if row else None


def _open_jobs(c: sqlite3.Connection, instance_ids: list[str] | None) -> list[JobRecord]:
    rows = c.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at"
    ).fetchall()
    jobs = [_job(r) for r in rows]
    if instance_ids is not None:
        wanted = set(instance_ids)
        jobs = [j for j in jobs if j.instance_id in wanted]
    return jobs


def _count_open(c: sqlite3.Connection) -> int:
    return int(c.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0])


def _quota(c: sqlite3.Connection, user_id: str, day: str, default_allowance: int) -> QuotaState:
    return _quota_in_tx(c, user_id, day, default_allowance)


def _set_allowance(c: sqlite3.Connection, user_id: str, allowance: int | None, now: float) -> None:
    _ensure_user(c, user_id, now)
    c.execute("UPDATE users SET daily_allowance = ? WHERE id = ?", (allowance, user_id))


def _grant(c: sqlite3.Connection, user_id: str, credits: int, by: str, now: float) -> int:
    _ensure_user(c, user_id, now)
    bonus = c.execute("SELECT bonus FROM users WHERE id = ?", (user_id,)).fetchone()[0]
    if bonus + credits < 0:
        raise StoreError(f"{user_id} has {bonus} bonus credits; {-credits} cannot be taken back.")
    c.execute(
        "INSERT INTO ledger (user_id, kind, credits, bonus, note, created_at) "
        "VALUES (?, 'grant', ?, ?, ?, ?)",
        (user_id, credits, credits, f"by {by}", now),
    )
    c.execute("UPDATE users SET bonus = bonus + ? WHERE id = ?", (credits, user_id))
    return int(bonus + credits)


def _ban(c: sqlite3.Connection, user_id: str, reason: str, by: str, now: float) -> None:
    c.execute(
        "INSERT INTO bans (user_id, reason, banned_by, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET reason = excluded.reason, "
        "banned_by = excluded.banned_by, created_at = excluded.created_at",
        (user_id, reason, by, now),
    )


def _unban(c: sqlite3.Connection, user_id: str) -> bool:
    return c.execute("DELETE FROM bans WHERE user_id = ?", (user_id,)).rowcount == 1


def _stats(c: sqlite3.Connection, day: str, since: float) -> dict[str, Any]:
    by_status = dict(
        c.execute(
            "SELECT status, COUNT(*) FROM jobs WHERE created_at >= ? GROUP BY status", (since,)
        ).fetchall()
    )
    failures = dict(
        c.execute(
            "SELECT error_kind, COUNT(*) FROM jobs WHERE status = 'failed' AND created_at >= ? "
            "GROUP BY error_kind",
            (since,),
        ).fetchall()
    )
    spent, refunded, gpu, images = c.execute(
        "SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(refunded), 0), COALESCE(SUM(gpu_seconds), 0), "
        "COALESCE(SUM(spent), 0) FROM jobs WHERE created_at >= ?",
        (since,),
    ).fetchone()
    users_today = c.execute("SELECT COUNT(DISTINCT user_id) FROM jobs WHERE day = ?", (day,)).fetchone()[0]
    total_users = c.execute("SELECT COUNT(*) FROM users").fetchone()[0]
    bans = c.execute("SELECT COUNT(*) FROM bans").fetchone()[0]
    return {
        "jobs": by_status,
        "failures": failures,
        "credits_spent": spent,
        "credits_refunded": refunded,
        "gpu_seconds": gpu,
        "images": images,
        "active_users_today": users_today,
        "users": total_users,
        "banned": bans,
        "open_jobs": _count_open(c),
    }


def _ledger_rows(c: sqlite3.Connection, user_id: str | None) -> list[dict[str, Any]]:
    c_rows = c.execute(
        "SELECT id, user_id, job_id, kind, credits, daily, bonus, day, note, created_at FROM ledger "
        + ("WHERE user_id = ? " if user_id else "")
        + "ORDER BY id",
        (user_id,) if user_id else (),
    )
    names = [d[0] for d in c_rows.description]
    return [dict(zip(names, row, strict=True)) for row in c_rows]


def _check_ledger(c: sqlite3.Connection) -> list[str]:
    problems = []
    for user_id, stored, summed in c.execute(
        "SELECT u.id, u.bonus, COALESCE((SELECT SUM(bonus) FROM ledger l WHERE l.user_id = u.id), 0) "
        "FROM users u"
    ):
        if stored != summed:
            problems.append(f"{user_id}: bonus {stored} but the ledger sums to {summed}")
    for user_id, day, stored, summed in c.execute(
        "SELECT d.user_id, d.day, d.used, COALESCE((SELECT SUM(daily) FROM ledger l "
        "WHERE l.user_id = d.user_id AND l.day = d.day), 0) FROM daily_usage d"
    ):
        if stored != summed:
            problems.append(f"{user_id} on {day}: used {stored} but the ledger sums to {summed}")
    for job_id, status, cost, spent, refunded, reserved, settled, back in c.execute(
        "SELECT j.id, j.status, j.cost, j.spent, j.refunded, "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'reserve'), 0), "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'settle'), 0), "
        "COALESCE((SELECT SUM(credits) FROM ledger l WHERE l.job_id = j.id AND kind = 'refund'), 0) "
        "FROM jobs j"
    ):
        if reserved != cost:
            problems.append(f"job {job_id}: reserved {reserved} of {cost}")
        if status in OPEN_STATUSES and (settled or back):
            problems.append(f"job {job_id}: open but settled {settled} and refunded {back}")
        if status not in OPEN_STATUSES and (settled != spent or back != refunded or spent + back != cost):
            problems.append(
                f"job {job_id}: cost {cost}, settled {settled}/{spent}, refunded {back}/{refunded}"
            )
    return problems


def _register_instance(
    c: sqlite3.Connection, instance_id: str, host: str, pid: int, now: float, ident: str | None
) -> None:
    c.execute(
        "INSERT OR REPLACE INTO instances (id, host, pid, started_at, heartbeat_at, ident) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (instance_id, host, pid, now, now, ident),
    )
