"""The operator's page at ``/admin`` and its JSON, behind ``IMAGINE_ADMIN_TOKEN``.

Off (404 with one sentence) while the token is unset. A request proves itself with
``Authorization: Bearer <token>``, or with the cookie that ``/admin?token=<token>`` sets (an HMAC of
the token, not the token, ``HttpOnly`` and ``SameSite=Strict``) before sending the browser on to
``/admin``, so the token leaves the address bar and history. The figures are
:meth:`gateway.accounts.Accounts.stats`, the same dict as ``imagine stats --json``; the actions are
the chat commands' (:func:`gateway.admin.run_admin`), by the actor ``web-admin``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounts import USERS_PAGE_MAX, WEB_ADMIN, parse_user
from gateway.admin import run_admin
from gateway.bodies import BoundedJSONRequest
from gateway.settings import Secret
from gateway.web.limits import refused_by_head
from gateway.web.state import web_of
from gateway.web.views import JSON, NO_STORE, error_response

ADMIN_PAGE = Path(__file__).with_name("static") / "admin.html"
COOKIE = "imagine_admin"
OFF = "The admin page is off: set IMAGINE_ADMIN_TOKEN to turn it on."
UNAUTHORIZED = (
    "The admin page needs its token: send Authorization: Bearer <IMAGINE_ADMIN_TOKEN>, "
    "or open /admin?token=<IMAGINE_ADMIN_TOKEN>."
)
USAGE = {
    "setquota": "setquota takes a whole number of images a day, or default.",
    "grant": "grant takes a whole number of credits (negative takes back).",
    "ban": "ban takes a reason.",
    "unban": "unban takes nothing more.",
}


def session_cookie(token: Secret) -> str:
    """What the browser keeps: proof that it was given the token, useless as the token itself."""
    return hmac.new(token.get().encode(), b"imagine admin session v1", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def admin_refusal(request: Request) -> Response | None:
    """404 while the page is off, 401 without the token or its cookie; None to go on."""
    token = web_of(request).settings.admin_token
    if not token:
        return error_response(404, OFF, "off")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip(), token.get()):
        return None
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and _same(cookie, session_cookie(token)):
        return None
    return error_response(401, UNAUTHORIZED, "unauthorized", headers={"WWW-Authenticate": "Bearer"})


class AdminRoute(APIRoute):
    """Checked for the token before anything else; a POST also as a JSON job is (limits.py), its
    body read within ``max_body_bytes``. A cross-site form cannot send JSON, and the cookie is
    ``SameSite=Strict``: an action needs this page or the token."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            refused = admin_refusal(request)
            if refused is None and request.method == "POST":
                refused = refused_by_head(request)
            if refused is not None:
                return refused
            limit = web_of(request).options.max_body_bytes
            return await handler(BoundedJSONRequest(request.scope, request.receive, limit=limit))

        return checked


router = APIRouter(route_class=AdminRoute, include_in_schema=False)
#: ``/admin`` itself: it checks the ``?token=`` it may carry before the usual checks.
page_router = APIRouter(include_in_schema=False)


@page_router.get("/admin")
async def admin_page(request: Request) -> Response:
    """The page; with ``?token=`` the cookie is set and the browser sent on to ``/admin``."""
    given = request.query_params.get("token")
    token = web_of(request).settings.admin_token
    if given is not None and token:
        if not _same(given, token.get()):
            return error_response(401, UNAUTHORIZED, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        response = Response(status_code=303, headers={"Location": "/admin", **NO_STORE})
        response.set_cookie(
            COOKIE,
            session_cookie(token),
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    refused = admin_refusal(request)
    if refused is not None:
        return refused
    page = web_of(request).admin_page
    headers = {**page.headers, **NO_STORE}
    return Response(page.html, media_type="text/html; charset=utf-8", headers=headers)


@router.get("/admin/api/stats")
async def admin_stats(request: Request) -> Response:
    """The figures of ``imagine stats --json``, and this process's queue and backend."""
    return JSON(await web_of(request).service.stats(WEB_ADMIN), headers=NO_STORE)


@router.get("/admin/api/users")
async def admin_users(
    request: Request,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=USERS_PAGE_MAX)] = 50,
) -> Response:
    accounts = web_of(request).service.accounts
    return JSON(await accounts.users(WEB_ADMIN, offset=offset, limit=limit), headers=NO_STORE)


class AdminAction(BaseModel):
    """What follows the user in the chat command: the number for setquota and grant, the reason for ban."""

    model_config = ConfigDict(extra="forbid")
    value: Annotated[str | int | None, Field(union_mode="left_to_right")] = None


@router.post("/admin/api/users/{user}/{action}")
async def admin_action(
    request: Request,
    user: str,
    action: Literal["setquota", "grant", "ban", "unban"],
    body: AdminAction | None = None,
) -> Response:
    """The chat command ``action`` about ``user``: the same rules and the same sentence."""
    value = None if body is None else body.value
    args = [] if value is None or str(value).strip() == "" else [str(value)]
    accounts = web_of(request).service.accounts
    message = await run_admin(accounts, WEB_ADMIN, action, parse_user(user, "web"), args, usage=USAGE[action])
    return JSON({"message": message}, headers=NO_STORE)
