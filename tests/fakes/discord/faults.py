"""Discord misbehaving on purpose: 429s as Discord and Cloudflare send them, errors, expired tokens."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.discord.records import FakeInteraction, RecordedRequest
from tests.fakes.discord.state import DiscordState


@dataclass
class InjectedFault:
    """A planned misbehaviour for the next ``remaining`` requests matching ``method`` and ``path``."""

    method: str
    path: str
    remaining: int
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    retry_after: float | None = None  # for 429s: X-RateLimit-Reset is computed when the fault hits
    hits: list[RecordedRequest] = field(default_factory=list)

    def applies_to(self, record: RecordedRequest) -> bool:
        return self.remaining > 0 and record.matches(self.method, self.path)


class DiscordFaults(DiscordState):
    """Faults planned for the next matching REST requests, and interaction tokens that die early."""

    # ---- faults ------------------------------------------------------------------------------------

    def inject_rate_limit(
        self,
        method: str,
        path: str,
        *,
        count: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str = "user",
        bucket: str | None = None,
        cloudflare: bool = False,
    ) -> InjectedFault:
        """Answer the next ``count`` matching requests with 429 as Discord does (body and ``X-RateLimit-*``).

        ``path`` is a pattern below the API root: ``{name}`` or ``*`` stand for one segment, ``**`` for any.
        ``cloudflare=True`` answers like Cloudflare's ban page instead (HTML, no ``Via``), which discord.py
        does not retry.
        """
        if cloudflare:
            fault = InjectedFault(
                method.upper(),
                path,
                count,
                status=429,
                body="<html><body>error code: 1015</body></html>",
                headers={"Content-Type": "text/html", "Retry-After": str(math.ceil(retry_after))},
            )
        else:
            headers = {
                "Retry-After": str(math.ceil(retry_after)),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": bucket or secrets.token_hex(16),
                "X-RateLimit-Scope": "global" if is_global else scope,
                "Via": "1.1 google",
            }
            if is_global:
                headers["X-RateLimit-Global"] = "true"
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
            if is_global:
                body["code"] = 0
            fault = InjectedFault(
                method.upper(), path, count, status=429, body=body, headers=headers, retry_after=retry_after
            )
        self.faults.append(fault)
        return fault

    def inject_error(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        count: int = 1,
        code: int = 0,
        message: str | None = None,
        delay: float = 0.0,
    ) -> InjectedFault:
        """Answer the next ``count`` matching requests with ``status`` (after ``delay`` seconds)."""
        body = {"message": message or f"{status}: Internal Server Error", "code": code}
        fault = InjectedFault(method.upper(), path, count, status=status, body=body, delay=delay)
        self.faults.append(fault)
        return fault

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        """Make the token dead as after 15 minutes: webhooks answer 401 ``Invalid Webhook Token`` (50027)."""
        interaction.token_expired = True
        self._notify()

    def _token_alive(self, interaction: FakeInteraction) -> bool:
        return (
            not interaction.token_expired and self.now() - interaction.created_at < self.interaction_token_ttl
        )

    def _fault_response(self, fault: InjectedFault) -> web.Response:
        if isinstance(fault.body, str):
            response = web.Response(status=fault.status or 500, text=fault.body)
            response.headers.update(fault.headers)
            return response
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["X-RateLimit-Reset"] = f"{self.now() + fault.retry_after:.3f}"
        return self._json(fault.body, status=fault.status or 500, headers=headers)
