"""Accounts: quotas, grants, bans and stats, and the sentences that word them.

Needs only the settings and the store, so the admin commands of the CLI use it without a backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gateway.budget import Budget
from gateway.errors import (
    Banned,
    BudgetSpent,
    Busy,
    ImagineError,
    InvalidRequest,
    NotAllowed,
    OutOfCredits,
    credits_word,
    elided,
    quoted,
    shown,
)
from gateway.messages import next_month_start, next_reset, reset_words, until_reset, utc_day, utc_month
from gateway.request import ImageRequest
from gateway.settings import Settings
from storage import Database, QuotaState, RefusedReason, ReservationRefused, StoreError

MAX_GRANT = 1_000_000
BUDGET_OFF = (
    "The GPU budget is off: set IMAGINE_MONTHLY_BUDGET (with IMAGINE_GPU_COST_PER_SECOND) to turn it on; "
    "admins then raise or lower this month's ceiling here."
)
#: The largest monthly budget an admin may set (in the currency of IMAGINE_GPU_COST_PER_SECOND).
MAX_BUDGET = 10_000_000.0
#: Longer than any platform's ids (a Discord snowflake is 20 digits, an IPv6 address 45 characters), and
#: short enough that every admin reply naming the user fits a chat message.
MAX_USER_ID_CHARS = 64
#: Callers who proved themselves to this process rather than by a chat id: the web admin page (its
#: token). A chat caller is always ``platform:id``, so no chat user can be one of these.
WEB_ADMIN = "web-admin"
TRUSTED_ACTORS = frozenset({WEB_ADMIN})
#: Users shown by name in the chat reply (the JSON and the web page show all ten the store ranks).
TOP_USERS_IN_TEXT = 5
USERS_PAGE_MAX = 200


class Accounts:
    """Who may ask and how much: the daily allowance, bonus credits, bans, and what admins see."""

    def __init__(self, settings: Settings, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.budget = Budget(settings, clock)

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.settings.admins

    async def quota(self, user_id: str) -> QuotaState:
        state = await self.db.quota(
            user_id, day=utc_day(self.clock()), default_allowance=self.settings.daily_quota
        )
        return replace(state, unlimited=self.is_admin(user_id))

    def quota_text(self, state: QuotaState) -> str:
        now = self.clock()
        if state.unlimited:
            return "You are an admin: your images are not limited."
        parts = [
            f"Used today: {state.used} of {state.allowance}"
            + (" (set by an admin)" if state.override else ""),
            f"Bonus credits: {state.bonus}",
            f"Reserved by images in progress: {state.reserved}",
            f"Left: {credits_word(state.remaining)}",
            f"Daily credits reset at {until_reset(now)}.",
        ]
        return "\n".join(parts)

    def refusal(self, refused: ReservationRefused, request: ImageRequest, now: float) -> ImagineError:
        """The sentence for a reservation the store refused: banned, too many open jobs, or no credits."""
        if refused.reason == RefusedReason.BANNED:
            return Banned(f"You are banned from Imagine: {refused.ban_reason}", reason=refused.ban_reason)
        if refused.reason == RefusedReason.USER_QUEUE:
            return Busy(
                f"You already have {refused.open_jobs} images in progress (the limit is "
                f"{self.settings.max_queued_per_user}); wait for one to finish. Nothing was charged.",
                retry_after=15,
            )
        if refused.reason == RefusedReason.QUEUE:
            return Busy(
                f"The queue is full ({refused.open_jobs} jobs); try again in a minute. Nothing was charged.",
                retry_after=60,
            )
        if refused.reason == RefusedReason.BUDGET:
            return BudgetSpent(
                "This bot's GPU budget for the month is used up; it resets on "
                f"{reset_words(now)}. Nothing was charged.",
                resets_at=next_month_start(now),
            )
        if refused.reason == RefusedReason.RELAX_UNNEEDED:
            left = refused.quota.remaining if refused.quota is not None else 0
            return InvalidRequest(
                f"You still have {credits_word(left)} today; --relax is for when they are spent. "
                "Ask again without it."
            )
        if refused.reason == RefusedReason.RELAX_USED:
            if self.settings.relax_daily == 0:
                return InvalidRequest("This bot has no relax lane; ask again without --relax.")
            return OutOfCredits(
                f"You have used today's {self.settings.relax_daily} relax "
                f"{'image' if self.settings.relax_daily == 1 else 'images'}; "
                f"they come back at {until_reset(now)}.",
                resets_at=next_reset(now),
            )
        quota = refused.quota
        assert quota is not None
        need = credits_word(request.num_images)
        if quota.remaining == 0:
            text = (
                f"You have used all {credits_word(quota.allowance)} of today's allowance"
                f"{' and your bonus' if quota.bonus == 0 and quota.override else ''}; "
                f"they reset at {until_reset(now)}."
            )
        else:
            text = (
                f"This needs {need} and you have {quota.remaining} left; "
                f"ask for fewer images (--n) or wait for the reset at {until_reset(now)}."
            )
        offer = self.settings.relax_daily > 0
        if offer:
            text += " Or add --relax for a free image that waits until the GPU is idle."
        return OutOfCredits(text, resets_at=next_reset(now), relax_offer=offer)

    # --- admin -------------------------------------------------------------------------
    # ``actor`` is the admin asking, checked here; ``None`` is the operator at the command line.

    def _check_admin(self, actor: str | None) -> None:
        if actor is not None and actor not in TRUSTED_ACTORS and not self.is_admin(actor):
            raise NotAllowed("Only Imagine admins can do that; nothing was changed.")

    async def set_allowance(self, actor: str | None, user_id: str, allowance: int | None) -> str:
        self._check_admin(actor)
        if allowance is not None and not 0 <= allowance <= MAX_GRANT:
            raise InvalidRequest(
                f"The daily allowance must be from 0 to {MAX_GRANT}; got {shown(allowance)}."
            )
        await self.db.set_allowance(user_id, allowance, now=self.clock())
        if allowance is None:
            return f"{user_id} is back on the default allowance of {self.settings.daily_quota} a day."
        return f"{user_id} may now make {allowance} images a day."

    async def show_budget(self, actor: str | None) -> str:
        """This month's GPU budget: spent, held by open jobs, the ceiling, when it resets."""
        self._check_admin(actor)
        if self.budget.ceiling_ms() is None:
            return BUDGET_OFF
        state = await self.db.budget(utc_month(self.clock()), default_ceiling_ms=self.budget.ceiling_ms())
        return self.budget.describe(state)

    async def set_budget(self, actor: str | None, amount: float | None) -> str:
        """An admin's ceiling for this month, in the currency of IMAGINE_GPU_COST_PER_SECOND (None:
        back to IMAGINE_MONTHLY_BUDGET)."""
        self._check_admin(actor)
        if self.budget.ceiling_ms() is None:
            raise InvalidRequest(BUDGET_OFF + " Nothing was changed.")
        rate = self.settings.gpu_cost_per_second
        if amount is not None and not 0 <= amount <= MAX_BUDGET:
            raise InvalidRequest(
                f"The budget must be a number from 0 to {MAX_BUDGET:g}; got {shown(amount)}."
            )
        ceiling_ms = None if amount is None else math.floor(amount / rate * 1000)
        await self.db.set_budget(utc_month(self.clock()), ceiling_ms)
        return await self.show_budget(actor)

    async def grant(self, actor: str | None, user_id: str, credits: int) -> str:
        self._check_admin(actor)
        if credits == 0 or not -MAX_GRANT <= credits <= MAX_GRANT:
            raise InvalidRequest(
                f"Grant a whole number of credits from 1 to {MAX_GRANT} (negative takes back); "
                f"got {shown(credits)}."
            )
        try:
            bonus = await self.db.grant(user_id, credits, by=actor or "operator", now=self.clock())
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from None
        verb = "Granted" if credits > 0 else "Took back"
        direction = "to" if credits > 0 else "from"
        return f"{verb} {credits_word(abs(credits))} {direction} {user_id}; bonus now {bonus}."

    async def ban(self, actor: str | None, user_id: str, reason: str) -> str:
        self._check_admin(actor)
        reason = reason.strip() or "no reason given"
        if len(reason) > 500:
            raise InvalidRequest(f"The ban reason is {len(reason)} characters long; the limit is 500.")
        if self.is_admin(user_id):
            raise InvalidRequest(f"{user_id} is an admin (IMAGINE_ADMINS) and cannot be banned.")
        await self.db.ban(user_id, reason, by=actor or "operator", now=self.clock())
        return f"{user_id} is banned: {reason}"

    async def unban(self, actor: str | None, user_id: str) -> str:
        self._check_admin(actor)
        if await self.db.unban(user_id):
            return f"{user_id} is no longer banned."
        return f"{user_id} was not banned."

    async def stats(
        self, actor: str | None, *, queue_here: int = 0, backend: str | None = None
    ) -> dict[str, Any]:
        """The last 24 hours, and spend today, this month and by hour over 7 days (UTC);
        ``queue_here`` and ``backend`` are the asking process's (none at the CLI)."""
        self._check_admin(actor)
        now = self.clock()
        stats = await self.db.stats(day=utc_day(now), since=now - 86400)
        stats["queue_here"] = queue_here
        stats["backend"] = self.settings.backend if backend is None else backend
        stats.update(await self.spend(now))
        state = await self.db.budget(utc_month(now), default_ceiling_ms=self.budget.ceiling_ms())
        stats["budget"] = {
            "month": state.month,
            "ceiling": self.budget.money(state.ceiling_ms),
            "spent": self.budget.money(state.spent_ms),
            "held": self.budget.money(state.held_ms),
            "set_by_admin": state.override,
        }
        if state.ceiling_ms is not None:
            stats["budget_text"] = self.budget.describe(state)
        return stats

    async def spend(self, now: float) -> dict[str, Any]:
        """The store's GPU seconds priced at ``IMAGINE_GPU_COST_PER_SECOND`` (the operator's currency),
        and the month projected to its end at the pace so far: its spend / the share of it gone."""
        rate = self.settings.gpu_cost_per_second
        today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        month = today.replace(day=1)
        next_month = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
        this_hour = now - now % 3600
        spend = await self.db.spend(
            day_start=today.timestamp(),
            month_start=month.timestamp(),
            hours_start=this_hour - (7 * 24 - 1) * 3600,
            now=now,
        )

        def cost(gpu_seconds: float) -> float:
            return significant(gpu_seconds * rate)

        elapsed = (now - month.timestamp()) / (next_month.timestamp() - month.timestamp())
        month_cost = cost(spend["month"]["gpu_seconds"])
        spend["today"]["cost"] = cost(spend["today"]["gpu_seconds"])
        spend["month"].update(
            month=month.strftime("%Y-%m"),
            cost=month_cost,
            elapsed_fraction=round(elapsed, 6),
            projected_cost=significant(month_cost / elapsed) if elapsed > 0 else month_cost,
        )
        for row in (*spend["top_users"], *spend["hourly"]):
            row["cost"] = cost(row["gpu_seconds"])
        return {"gpu_cost_per_second": rate, **spend}

    def stats_text(self, stats: dict[str, Any]) -> str:
        jobs = stats["jobs"]
        by_status = ", ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "none"
        lines = [
            "Last 24 hours:",
            f"Jobs: {sum(jobs.values())} ({by_status})",
            f"Images delivered: {stats['images']}; credits refunded: {stats['credits_refunded']}",
            f"GPU seconds: {stats['gpu_seconds']:.1f}",
            f"Active users today: {stats['active_users_today']} of {stats['users']}",
            f"Banned: {stats['banned']}",
            f"Open jobs: {stats['open_jobs']}; backend: {stats['backend']}",
        ]
        if "month" in stats:
            lines += self._spend_lines(stats)
        if "budget_text" in stats:
            lines += ["", stats["budget_text"]]
        return "\n".join(lines)

    def _spend_lines(self, stats: dict[str, Any]) -> list[str]:
        today, month = stats["today"], stats["month"]
        priced = stats["gpu_cost_per_second"] > 0

        def window(figures: dict[str, Any]) -> str:
            seconds = f"{figures['gpu_seconds']:,.1f} GPU s, {figures['images']} images"
            return f"{figures['cost']:,.2f} ({seconds})" if priced else seconds

        lines = [
            "",
            f"Spend (UTC; GPU seconds x {stats['gpu_cost_per_second']:g} a second, in your currency):"
            if priced
            else "Spend (UTC; set IMAGINE_GPU_COST_PER_SECOND to see it in money):",
            f"Today: {window(today)}",
            f"This month: {window(month)}",
        ]
        if priced:
            lines.append(
                f"Projected to month end: {month['projected_cost']:,.2f} "
                f"(this month's spend over the {month['elapsed_fraction']:.0%} of it gone)"
            )
        per_image = stats["gpu_seconds_per_image"]
        if per_image["jobs"]:
            lines.append(
                f"GPU seconds per image: p50 {per_image['p50']:.2f}, p95 {per_image['p95']:.2f} "
                f"({per_image['jobs']} jobs this month)"
            )
        top = stats["top_users"][:TOP_USERS_IN_TEXT]
        if top:
            shown = "; ".join(
                f"{elided(u['user'])} {u['images']} images, {u['gpu_seconds']:,.1f} GPU s" for u in top
            )
            lines.append(f"Top users this month: {shown}")
        refunds = stats["refunds"]
        if refunds:
            shown = "; ".join(
                f"{elided(r['reason'])} {r['jobs']} jobs, {credits_word(r['credits'])}" for r in refunds[:8]
            )
            lines.append(f"Refunds this month: {shown}")
        return lines

    async def users(self, actor: str | None, *, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """A page of the users table, by id: the allowance each has today (an admin's or the
        default), used today, bonus, and the ban reason."""
        self._check_admin(actor)
        if not 0 <= offset <= 10**9 or not 1 <= limit <= USERS_PAGE_MAX:
            raise InvalidRequest(
                f"Ask for 1 to {USERS_PAGE_MAX} users from an offset of 0 or more; "
                f"got {shown(limit)} from {shown(offset)}."
            )
        total, rows = await self.db.users_page(day=utc_day(self.clock()), offset=offset, limit=limit)
        default = self.settings.daily_quota
        for row in rows:
            row["override"] = row["allowance"] is not None
            row["allowance"] = default if row["allowance"] is None else row["allowance"]
            row["admin"] = self.is_admin(row["id"])
        return {"total": total, "offset": offset, "limit": limit, "users": rows}


def significant(amount: float) -> float:
    """Money to 6 significant digits: exact enough at any price a second, free of float noise."""
    return float(f"{amount:.6g}")


def parse_user(text: str, platform: str) -> str:
    """``123`` or ``discord:123`` -> ``discord:123``; anything else is one clear sentence."""
    text = text.strip()
    if len(text) > MAX_USER_ID_CHARS:
        raise InvalidRequest(f"A user id is at most {MAX_USER_ID_CHARS} characters long; got {quoted(text)}.")
    if ":" in text:
        plat, _, ident = text.partition(":")
        if plat and ident and plat.isalnum() and all(ch.isprintable() and not ch.isspace() for ch in ident):
            return f"{plat.lower()}:{ident}"
    elif text.isdigit():
        return f"{platform}:{text}"
    raise InvalidRequest(f"Name the user by id or as platform:id, e.g. {platform}:123; got {quoted(text)}.")
