"""The web front's /admin: off without IMAGINE_ADMIN_TOKEN, 401 without the token, the figures of
`imagine stats --json`, and the chat commands' actions, on a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.accounts import Accounts
from gateway.web.admin import COOKIE, OFF, UNAUTHORIZED
from gateway.web.middleware import route_label
from tests.test_web import LiveServer, ServerFactory, make_server, submit, wait_done  # noqa: F401

TOKEN = "s3cret-admin-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_server(make_server: ServerFactory) -> LiveServer:  # noqa: F811
    return make_server(IMAGINE_ADMIN_TOKEN=TOKEN, IMAGINE_GPU_COST_PER_SECOND="0.002")


@pytest.fixture
def http(admin_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=admin_server.url, timeout=10) as client:
        yield client


def test_without_the_token_set_the_page_is_off(make_server: ServerFactory) -> None:  # noqa: F811
    server = make_server()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in ("/admin", "/admin?token=x", "/admin/api/stats", "/admin/api/users"):
            answer = http.get(path, headers=BEARER)
            assert answer.status_code == 404 and answer.json() == {"error": OFF, "kind": "off"}, path
        assert http.post("/admin/api/users/discord:1/unban", headers=BEARER, json={}).status_code == 404


def test_without_the_right_token_every_admin_route_is_401(http: httpx.Client) -> None:
    wrong = {"Authorization": "Bearer nope"}
    for headers in ({}, wrong, {"Authorization": TOKEN}, {"Cookie": f"{COOKIE}={TOKEN}"}):
        for path in ("/admin", "/admin/api/stats", "/admin/api/users?limit=5"):
            answer = http.get(path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.json() == {"error": UNAUTHORIZED, "kind": "unauthorized"}
            assert answer.headers["www-authenticate"] == "Bearer"
        assert http.post("/admin/api/users/discord:1/ban", headers=headers, json={}).status_code == 401
    assert http.get("/admin?token=nope").status_code == 401
    assert TOKEN not in http.get("/admin").text


def test_the_token_in_the_address_becomes_a_cookie_and_the_page_loads(http: httpx.Client) -> None:
    answer = http.get(f"/admin?token={TOKEN}")
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
    cookie = answer.headers["set-cookie"]
    assert (
        TOKEN not in cookie
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie
        and "Path=/admin" in cookie
    )
    page = http.get("/admin")  # the client kept the cookie
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert "https://" not in page.text, "nothing from elsewhere: no CDN, no fonts"
    assert http.get("/admin/api/stats").status_code == 200
    assert http.get("/api/quota").status_code == 200, "the cookie is for /admin only, and harmless elsewhere"


def test_stats_are_the_accounts_figures_with_spend(admin_server: LiveServer, http: httpx.Client) -> None:
    job = submit(http, "a fox --n 2").json()["id"]
    view = wait_done(http, job)
    for url in view["images"]:
        assert http.get(url).status_code == 200  # the first download charges the job
    stats = http.get("/admin/api/stats", headers=BEARER).json()
    accounts: Accounts = admin_server.service.accounts
    expected: dict[str, Any] = admin_server.call(accounts.stats(None))
    for key in ("today", "month", "gpu_seconds_per_image", "top_users", "refunds", "images", "users"):
        assert stats[key] == expected[key], key
    assert stats["gpu_cost_per_second"] == 0.002
    assert stats["today"]["images"] == 2 and stats["today"]["jobs"] == 1
    assert stats["top_users"][0]["user"].startswith("web:") and stats["top_users"][0]["images"] == 2
    assert sum(hour["jobs"] for hour in stats["hourly"]) == 1 and len(stats["hourly"]) == 168
    month = stats["month"]
    assert month["cost"] == pytest.approx(month["gpu_seconds"] * 0.002, rel=1e-5)
    assert month["projected_cost"] == pytest.approx(month["cost"] / month["elapsed_fraction"], rel=1e-4)
    assert stats["backend"] == "fake" and "queue_here" in stats


def test_actions_are_the_chat_commands_and_keep_the_ledger(
    admin_server: LiveServer, http: httpx.Client
) -> None:
    def act(user: str, action: str, value: object = None) -> httpx.Response:
        body = {} if value is None else {"value": value}
        return http.post(f"/admin/api/users/{user}/{action}", json=body, headers=BEARER)

    assert act("discord:5", "setquota", 7).json() == {"message": "discord:5 may now make 7 images a day."}
    assert act("discord:5", "grant", "3").json() == {
        "message": "Granted 3 credits to discord:5; bonus now 3."
    }
    assert act("discord:6", "ban", "too many foxes").json() == {
        "message": "discord:6 is banned: too many foxes"
    }
    users = http.get("/admin/api/users", headers=BEARER).json()
    assert users["total"] == 2
    assert users["users"] == [
        {
            "id": "discord:5",
            "allowance": 7,
            "override": True,
            "used_today": 0,
            "bonus": 3,
            "banned": None,
            "admin": False,
        },
        {
            "id": "discord:6",
            "allowance": 25,
            "override": False,
            "used_today": 0,
            "bonus": 0,
            "banned": "too many foxes",
            "admin": False,
        },
    ]
    assert act("discord:6", "unban").json() == {"message": "discord:6 is no longer banned."}
    assert act("discord:5", "setquota", "default").json() == {
        "message": "discord:5 is back on the default allowance of 25 a day."
    }
    # the chat commands' refusals, with their sentences, and nothing changes
    assert (
        act("discord:5", "grant", 0).json()["error"].startswith("Grant a whole number of credits from 1 to")
    )
    assert (
        act("discord:5", "grant", "many").json()["error"]
        == "grant takes a whole number of credits (negative takes back)."
    )
    assert act("discord:5", "setquota").status_code == 400
    assert act("bob", "ban").json()["error"].startswith("Name the user by id or as platform:id")
    assert act("discord:5", "promote").status_code in (400, 404, 422)
    not_json = http.post("/admin/api/users/discord:5/grant", content=b"value=3", headers=BEARER)
    assert not_json.status_code == 415
    assert http.get("/admin/api/users?limit=0", headers=BEARER).status_code == 400
    ledger = admin_server.ledger()
    assert [(row["user_id"], row["kind"], row["credits"]) for row in ledger] == [("discord:5", "grant", 3)]
    assert "web-admin" in str(ledger[0])
    admin_server.check()


def test_admin_routes_have_their_own_metric_labels() -> None:
    assert route_label("/admin") == "/admin"
    assert route_label("/admin/api/users/discord:1/ban") == "/admin/api/users/{id}/{action}"
    assert route_label("/admin/other") == "other"
