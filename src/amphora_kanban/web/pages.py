"""The HTML pages and the health check.

Pages are static files of ``web/static/`` (or the app's ``static_dir``) served as they are (the front end's ES
modules read everything else from the API), with ``Cache-Control: no-cache``. Pages for
signed-in people send others to ``/login?next=<the page>`` (303). A page whose file is
missing answers 404 in JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

import amphora
from amphora.utils import u64
from amphora_kanban.errors import NotFound
from amphora_kanban.site import User
from amphora_kanban.web.auth import COOKIE, auth_of
from amphora_kanban.web.store import site_of

__all__ = ["STATIC", "page", "healthz", "signed_in_user"]

STATIC = Path(__file__).resolve().parent / "static"


async def signed_in_user(request: Request) -> dict[str, Any] | None:
    """The JSON of the user whose live session the request carries, or None."""
    services = request.app.state.kanban
    session_id = services.cookies.unsign(request.cookies.get(COOKIE))
    if session_id is None:
        return None

    def look(conn: amphora.Connection) -> dict[str, Any] | None:
        session = auth_of(conn).session(session_id, services.clock())
        if session is None:
            return None
        try:
            user: User = site_of(conn).user(session.user_id)
        except NotFound:
            return None
        return user.to_json()
    return await services.store.read(look)


def page(filename: str, signed_in: bool) -> Callable[[Request], Any]:
    """The endpoint serving ``static/filename``, only to the signed in if ``signed_in``."""
    async def serve(request: Request) -> Response:
        if signed_in and await signed_in_user(request) is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
        path = request.app.state.static_dir / filename
        if not path.is_file():
            return JSONResponse({"error": f"the page {filename} is not installed"}, 404)
        return FileResponse(path, media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})
    serve.__name__ = f"page_{filename.partition('.')[0]}"
    return serve


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 ``{"ok": true, "last_transaction": "0x..."}`` when the
    database reads (the id of its newest transaction, in hex as the ``amphora`` command
    shows it), else 503."""
    store = request.app.state.kanban.store

    def check(conn: amphora.Connection) -> str:
        site_of(conn)
        return f"0x{u64(store.db.last_transaction()):016x}"
    try:
        last = await store.read(check)
    except Exception as exc:  # whatever keeps the database from answering
        return JSONResponse({"ok": False, "error": type(exc).__name__}, 503,
                            {"cache-control": "no-store"})
    return JSONResponse({"ok": True, "last_transaction": last}, 200,
                        {"cache-control": "no-store"})
