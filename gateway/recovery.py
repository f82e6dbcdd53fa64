"""This process in the store, and what happens when a process or the store fails.

A process registers, renews its lease with a heartbeat, and closes the jobs of processes that are
gone (refunded, or charged when their delivery had begun). Store writes that must happen (a refund,
a settle) and failed are kept and retried until the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.errors import credits_word
from gateway.metrics import Metrics
from storage import Database, InstanceRecord, JobRecord, StoreUnavailable

log = logging.getLogger("imagine.gateway")

HEARTBEAT_SECONDS = 10.0
#: How far this host's clock may be from the store server's before the log says so: leases compare
#: the clocks of different hosts, so a skew near LEASE_SECONDS refunds live jobs or keeps dead ones.
CLOCK_SKEW_WARNING = 5.0
#: Heartbeats between two looks at the store server's clock.
CLOCK_CHECK_EVERY = 6
#: A process whose heartbeat is older than this has lost its jobs: any live process refunds them.
LEASE_SECONDS = 30.0
#: How soon a store operation that failed (a lock past the busy timeout, a full disk) is tried again.
REPAIR_SECONDS = (0.2, 5.0)
STORE_DOWN = "Imagine could not reach its database"


class StoreHealth:
    """Whether the store answers (``/healthz`` says ``degraded`` while not), and the writes owed to it."""

    def __init__(self) -> None:
        self.ok = True
        #: Store writes that failed and must still happen (a refund, a settle), by job id.
        self._repairs: dict[str, Callable[[], Awaitable[object]]] = {}
        self._wake = asyncio.Event()

    def failed(self, exc: BaseException, job_id: str | None) -> None:
        """Log the first failure loudly and the rest per job, once each."""
        if self.ok:
            log.error("the store failed%s: %s", f" on job {job_id}" if job_id else "", exc)
        elif job_id is not None:
            log.warning("the store failed on job %s: %s", job_id, exc)
        self.ok = False

    def back(self) -> None:
        if not self.ok:
            log.warning("the store answers again")
        self.ok = True

    def repair_later(self, job_id: str, write: Callable[[], Awaitable[object]]) -> None:
        """Keep trying a store write that must happen (a refund, a settle) until it does."""
        self._repairs[job_id] = write
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._repairs)

    async def repair_all(self, attempts: int = 1) -> None:
        for _ in range(attempts):
            for job_id, write in list(self._repairs.items()):
                try:
                    await write()
                except StoreUnavailable as exc:
                    self.failed(exc, job_id)
                    break
                except Exception:
                    log.exception("store repair of job %s failed", job_id)
                    self._repairs.pop(job_id, None)
                else:
                    self._repairs.pop(job_id, None)
                    self.back()
            if not self._repairs:
                return

    async def repair_forever(self) -> None:
        delay = REPAIR_SECONDS[0]
        while True:
            if not self._repairs:
                self._wake.clear()
                await self._wake.wait()
                delay = REPAIR_SECONDS[0]
            await asyncio.sleep(delay)
            await self.repair_all()
            delay = min(delay * 2, REPAIR_SECONDS[1])


class Instance:
    """This process as the store knows it: its id and lease, the store and clock every part writes
    through, and the recovery of the jobs of processes that are gone."""

    def __init__(self, db: Database, metrics: Metrics, *, clock: Callable[[], float]) -> None:
        self.id = uuid.uuid4().hex
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.health = StoreHealth()
        self.clock_skew: float | None = None  # this host's clock minus the store server's, last seen
        self._beats = 0

    async def register(self) -> None:
        await self.db.register_instance(
            self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            now=self.clock(),
            ident=process_ident(os.getpid()),
        )
        await self.check_clock()

    async def unregister(self) -> None:
        """Mark this process stopped, so that no one waits for its lease to lapse."""
        with contextlib.suppress(Exception):
            await self.db.stop_instance(self.id, self.clock())

    async def check_clock(self) -> float | None:
        """Compare this host's clock with the store server's (PostgreSQL); warn past the limit."""
        before = self.clock()
        server = await self.db.server_clock()
        if server is None:
            return None
        skew = (before + self.clock()) / 2 - server
        was_off = self.clock_skew is not None and abs(self.clock_skew) > CLOCK_SKEW_WARNING
        self.clock_skew = skew
        if abs(skew) > CLOCK_SKEW_WARNING and not was_off:
            log.warning(
                "this host's clock is %.1f s %s the database server's: leases compare the clocks of "
                "different hosts (a lease is %.0f s), so keep them synchronised (NTP)",
                abs(skew),
                "ahead of" if skew > 0 else "behind",
                LEASE_SECONDS,
            )
        elif was_off and abs(skew) <= CLOCK_SKEW_WARNING:
            log.info("this host's clock agrees with the database server's again (%.1f s)", skew)
        return skew

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.db.heartbeat(self.id, self.clock())
                self.health.back()
                self._beats += 1
                if self._beats % CLOCK_CHECK_EVERY == 0:
                    await self.check_clock()
                await self.recover()
            except StoreUnavailable as exc:
                self.health.failed(exc, None)
            except Exception:
                log.exception("heartbeat failed")

    async def recover(self) -> list[JobRecord]:
        """Close every open job whose process is gone (killed, crashed, stalled past its lease).

        Jobs whose delivery had begun are charged (the images may be out: never given away free);
        the others are refunded, and a front of any process tells their users (:meth:`take_recovered`).
        """
        now = self.clock()
        mine = process_ident(os.getpid())
        dead = {
            inst.id: _proven_dead(inst, mine)
            for inst in await self.db.instances()
            if inst.id != self.id and _gone(inst, now, mine)
        }
        orphans = [
            job for job in await self.db.open_jobs() if job.instance_id is None or job.instance_id in dead
        ]
        refunded = []
        for record in orphans:
            cost = record.cost
            message = (
                f"Imagine restarted while making your image; your {credits_word(cost)} "
                f"{'was' if cost == 1 else 'were'} refunded. Please try again."
            )
            # The store checks the owner's lease again as it closes the job: one that heartbeated
            # since (only slow) keeps it, and one that claimed its delivery meanwhile is charged.
            done = await self.db.recover(
                record.id,
                owner=record.instance_id,
                lease_seconds=LEASE_SECONDS,
                proven_dead=dead.get(record.instance_id or "", False),
                message=message,
                now=now,
            )
            if done is None:
                continue
            if done.status == "succeeded":
                self.metrics.job_finished("succeeded", spent=done.spent, refunded=done.refunded)
            else:
                refunded.append(done)
                self.metrics.job_finished("interrupted", refunded=done.refunded)
        if refunded:
            log.info("refunded %d job(s) left open by a stopped process", len(refunded))
        return refunded

    async def take_recovered(self, prefix: str) -> list[JobRecord]:
        """Jobs of one platform's users (``discord:``) that recovery refunded, for its front to tell.

        Kept in the store, not in memory: whichever process refunded a job, the front that can
        reach its user takes the notice, once.
        """
        try:
            return await self.db.take_notices(prefix, self.clock())
        except StoreUnavailable as exc:
            self.health.failed(exc, None)
            return []


def process_ident(pid: int) -> str | None:
    """``boot id/pid namespace/pid/start time`` of a process, or None where /proc cannot tell.

    Host name and PID are not enough: two containers with host networking are both PID 1 on
    the same host name. The kernel's boot id and the PID namespace tell them apart, and the start
    time tells a reused PID from the process that registered.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rpartition(")")[2].split()[19]  # field 22, counted after the command name
    return f"{boot}/{namespace}/{pid}/{start}"


def _gone(inst: InstanceRecord, now: float, mine: str | None) -> bool:
    """Whether a registered process has lost its jobs: stopped, past its lease, or provably dead."""
    if inst.stopped_at is not None or now - inst.heartbeat_at > LEASE_SECONDS:
        return True
    return _proven_dead(inst, mine)


def _proven_dead(inst: InstanceRecord, mine: str | None) -> bool:
    """A process on this kernel and in this PID namespace whose PID is gone or reused."""
    if inst.ident is None or mine is None or mine.rsplit("/", 2)[0] != inst.ident.rsplit("/", 2)[0]:
        return False  # another kernel or PID namespace: only its heartbeat can tell
    return process_ident(inst.pid) != inst.ident
