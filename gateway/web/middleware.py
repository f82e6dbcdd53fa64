"""Who is asking, once per request: the client behind trusted proxies, refused when blocked; and
the count of answers by route."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.web.state import CLIENT_KEY, WebState
from gateway.web.views import error_response

_ROUTES = frozenset(
    {
        "/",
        "/api/jobs",
        "/api/quota",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/admin",
        "/admin/api/stats",
        "/admin/api/users",
    }
)


def route_label(path: str) -> str:
    if path.startswith("/api/jobs/"):
        return "/api/jobs/{id}/images/{n}" if "/images/" in path else "/api/jobs/{id}"
    if path.startswith("/admin/api/users/"):
        return "/admin/api/users/{id}/{action}"
    return path if path in _ROUTES else "other"


class ClientMiddleware:
    """Resolve the client once per request, refuse blocked addresses, count responses by route."""

    def __init__(self, app: ASGIApp, web: WebState) -> None:
        self.app = app
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"]
        client = self.web.resolver.resolve(peer[0] if peer else None, forwarded)
        scope[CLIENT_KEY] = client
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if client.blocked:
                response = error_response(
                    403, "Requests from your address are blocked by this Imagine server.", "blocked"
                )
                await response(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.web.service.metrics.http_request(route_label(scope["path"]), status)
