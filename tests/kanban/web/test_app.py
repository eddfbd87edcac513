"""The app in the test's process (under uvicorn), for what needs its settings:
the pages from a static folder of the test's, a clock that moves on, forced Secure
cookies, an error no route makes on purpose, a closed database."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from starlette.routing import Route

import amphora
from amphora_kanban.web.accounts import add_account
from amphora_kanban.web.api import endpoint
from amphora_kanban.web.auth import AUTH_KEY, SIGNED_IN, Passwords
from amphora_kanban.web.http import SECURITY_HEADERS
from kanbanprocess import PASSWORD, InProcess

DAY = 86400.0


class Clock:
    """A clock the test moves on."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[amphora.DB]:
    database = amphora.open(f"sqlite:///{tmp_path}/kanban.db")
    yield database
    database.close()


@pytest.fixture
def app_client(db: amphora.DB) -> Iterator[Any]:
    """``app_client(**settings)``: a client of the app with those settings, served in
    this process, with an administrator ann@example.org."""
    started: list[tuple[InProcess, httpx.Client]] = []

    def start(**settings: Any) -> httpx.Client:
        served = InProcess(db, **settings)
        with db.transaction() as conn:
            add_account(conn, Passwords(fast=True), "ann@example.org", PASSWORD, "Ann", True)
        client = httpx.Client(base_url=served.url)
        client.app = served.app
        started.append((served, client))
        return client
    yield start
    for served, client in started:
        client.close()
        served.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def static(tmp_path: Path) -> Path:
    folder = tmp_path / "static"
    folder.mkdir()
    for page in ("login", "board"):
        (folder / f"{page}.html").write_text(f"<!doctype html><title>{page}</title>")
    (folder / "app.css").write_text(":root { color-scheme: light dark; }")
    return folder


def sign_in(client: httpx.Client) -> Any:
    reply = client.post("/api/login", json={"email": "ann@example.org", "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
    return reply


def assert_secure_headers(reply: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value, (reply.request.url, name)


def test_pages_are_served_to_the_signed_in_with_security_headers(app_client, static):
    client = app_client(static_dir=static)
    login = client.get("/login")
    assert login.status_code == 200 and login.text.endswith("<title>login</title>")
    assert login.headers["content-type"].startswith("text/html")
    assert login.headers["cache-control"] == "no-cache"
    assert_secure_headers(login)
    away = client.get("/boards/team?at=2026-01-01")
    assert away.status_code == 303
    assert away.headers["location"] == "/login?next=%2Fboards%2Fteam%3Fat%3D2026-01-01"
    assert_secure_headers(away)
    sign_in(client)
    board = client.get("/boards/team")
    assert board.status_code == 200 and "<title>board</title>" in board.text
    missing = client.get("/")  # no index.html in this folder
    assert missing.status_code == 404 and "index.html" in missing.json()["error"]
    css = client.get("/static/app.css")
    assert css.status_code == 200 and "color-scheme" in css.text
    assert_secure_headers(css)
    for reply in (client.get("/static/nothing.js"), client.get("/api/nothing"),
                  client.delete("/api/boards")):
        assert reply.status_code in (404, 405) and "error" in reply.json()
        assert_secure_headers(reply)


def test_an_unexpected_error_is_a_logged_500_without_details(app_client, caplog):
    client = app_client()

    def broken(call: Any) -> None:
        raise RuntimeError("a secret detail")
    client.app.router.routes.append(Route("/api/broken", endpoint(broken, SIGNED_IN, False)))
    sign_in(client)
    with caplog.at_level(logging.ERROR, logger="amphora_kanban.web"):
        reply = client.get("/api/broken")
    assert reply.status_code == 500 and reply.json() == {"error": "internal error"}
    assert "secret" not in reply.text
    assert_secure_headers(reply)
    assert "a secret detail" in caplog.text and "Traceback" in caplog.text


def test_health_fails_when_the_database_does(app_client, db):
    client = app_client()
    first = client.get("/healthz").json()
    sign_in(client)  # a commit
    then = client.get("/healthz").json()["last_transaction"]
    assert re.fullmatch("0x[0-9a-f]{16}", then) and then > first["last_transaction"]
    db.close()
    reply = client.get("/healthz")
    assert reply.status_code == 503 and reply.json()["ok"] is False


def test_expired_sessions_are_ignored_and_dropped(app_client, db, clock):
    client = app_client(clock=clock, session_days=14)
    sign_in(client)
    clock.now += 13 * DAY
    assert client.get("/api/me").status_code == 200
    clock.now += 2 * DAY
    assert client.get("/api/me").status_code == 401
    with db.transaction() as conn:
        assert len(conn.root()[AUTH_KEY].sessions) == 0  # dropped when met


def test_expired_sessions_go_at_the_next_sign_in(app_client, db, clock):
    client = app_client(clock=clock, session_days=1)
    sign_in(client)
    sign_in(client)
    clock.now += 2 * DAY
    sign_in(client)
    with db.transaction() as conn:
        assert len(conn.root()[AUTH_KEY].sessions) == 1


def test_invitations_expire_after_a_week(app_client, clock):
    client = app_client(clock=clock)
    sign_in(client)
    tokens = [client.post("/api/invitations", json={"email": f"{n}@example.org"}
                          ).json()["token"] for n in ("early", "late")]
    clock.now += 6 * DAY
    assert client.post(f"/api/invitations/{tokens[0]}",
                       json={"password": PASSWORD}).status_code == 200
    clock.now += 2 * DAY
    assert client.post(f"/api/invitations/{tokens[1]}",
                       json={"password": PASSWORD}).status_code == 404


def test_cookies_can_be_made_secure_whatever_the_scheme(app_client):
    client = app_client(secure_cookies=True)
    parts = [p.strip().lower() for p in sign_in(client).headers["set-cookie"].split(";")]
    assert "secure" in parts and "httponly" in parts
