"""``create_app(db)``: the Kanban's ASGI application, and its route table.

The table :data:`API` is the one place that says, for every JSON route, who may call it
(``PUBLIC``, ``SIGNED_IN``, ``ADMIN``) and whether it writes (runs in a committed
transaction, and needs the CSRF header); :func:`~amphora_kanban.web.auth.authorise`
enforces it.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

import amphora
from amphora_kanban.web import accounts, archive, boards, live
from amphora_kanban.web.api import Services, endpoint
from amphora_kanban.web.auth import (ADMIN, PUBLIC, SIGNED_IN, CookieSigner, Passwords,
                                     SignInLimiter, setup_auth)
from amphora_kanban.web.http import EXCEPTION_HANDLERS, SecurityHeaders
from amphora_kanban.web.pages import STATIC, healthz, page
from amphora_kanban.web.store import Store

__all__ = ["create_app", "API", "PAGES"]

GET, POST, PUT, PATCH = "GET", "POST", "PUT", "PATCH"
READ, WRITE = False, True
BOARD = "/api/boards/{name}"
CARD = BOARD + "/cards/{id}"

# method, path, handler, access, writes
API: list[tuple[str, str, Callable[..., Any], str, bool]] = [
    (POST, "/api/login", accounts.login, PUBLIC, WRITE),
    (POST, "/api/logout", accounts.logout, SIGNED_IN, WRITE),
    (GET, "/api/me", accounts.me, SIGNED_IN, READ),
    (GET, "/api/users", accounts.users, SIGNED_IN, READ),
    (POST, "/api/invitations", accounts.invite, ADMIN, WRITE),
    (POST, "/api/invitations/{token}", accounts.accept_invitation, PUBLIC, WRITE),
    (GET, "/api/boards", boards.list_boards, SIGNED_IN, READ),
    (POST, "/api/boards", boards.create_board, ADMIN, WRITE),
    (POST, "/api/boards/import", boards.import_board, ADMIN, WRITE),
    (GET, BOARD, boards.get_board, SIGNED_IN, READ),
    (PUT, BOARD + "/states", boards.put_states, ADMIN, WRITE),
    (POST, BOARD + "/cards", boards.add_card, SIGNED_IN, WRITE),
    (GET, CARD, boards.get_card, SIGNED_IN, READ),
    (PATCH, CARD, boards.patch_card, SIGNED_IN, WRITE),
    (POST, CARD + "/move", boards.move_card, SIGNED_IN, WRITE),
    (POST, CARD + "/comments", boards.comment, SIGNED_IN, WRITE),
    (POST, CARD + "/archive", boards.archive, SIGNED_IN, WRITE),
    (POST, CARD + "/restore", boards.restore, SIGNED_IN, WRITE),
    (GET, BOARD + "/archive", archive.search_archive, SIGNED_IN, READ),
    (GET, BOARD + "/metrics", boards.metrics, SIGNED_IN, READ),
    (GET, BOARD + "/export", boards.export, ADMIN, READ),
]

# path, file, for the signed in only
PAGES = [
    ("/login", "login.html", False),
    ("/invite/{token}", "invite.html", False),
    ("/", "index.html", True),
    ("/boards/{name}", "board.html", True),
    ("/boards/{name}/metrics", "metrics.html", True),
]


def _routes(static: Path) -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route(path, endpoint(handler, access, writes), methods=[method])
        for method, path, handler, access, writes in API]
    routes.append(Route(BOARD + "/events", live.events, methods=[GET]))
    routes += [Route(path, page(file, signed_in), methods=[GET])
               for path, file, signed_in in PAGES]
    routes.append(Route("/healthz", healthz, methods=[GET]))
    routes.append(Mount("/static", StaticFiles(directory=static, check_dir=False),
                        name="static"))
    return routes


def create_app(db: amphora.DB, *, secure_cookies: bool | None = None,
               fast_hashing: bool = False, session_days: float = 14,
               sign_in_limit: int = 5, sign_in_window: float = 300.0,
               poll_interval: float = 2.0, ping_interval: float = 15.0,
               static_dir: str | Path | None = None,
               clock: Callable[[], float] = time.time) -> Starlette:
    """The app on an open database (the site and the session store are created in it
    if missing).

    ``secure_cookies``: mark the session cookie ``Secure`` always (True), never (False),
    or when the request came over https (None). ``fast_hashing`` lowers Argon2's cost
    (tests only). ``sign_in_limit`` failures within ``sign_in_window`` seconds refuse
    further sign-ins (429). Live updates wake on every commit and also look every
    ``poll_interval`` seconds; streams send a ping every ``ping_interval`` seconds.
    ``static_dir`` holds the pages and static files (default: the package's ``static``).
    ``clock`` gives the time in seconds since the epoch (sessions, invitations, history).
    """
    store = Store(db)
    store.setup()
    secret = store.write_now(lambda conn: setup_auth(conn).secret)
    services = Services(store, Passwords(fast_hashing),
                        SignInLimiter(sign_in_limit, sign_in_window), CookieSigner(secret),
                        secure_cookies, session_days, clock)
    hub = live.LiveHub(store, poll_interval, ping_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            hub.close()

    static = Path(static_dir or STATIC)
    app = Starlette(routes=_routes(static), middleware=[Middleware(SecurityHeaders)],
                    exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.kanban = services
    app.state.live = hub
    app.state.static_dir = static
    return app
