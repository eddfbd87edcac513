"""How a JSON route runs: parse, authorise, call the model, commit, answer.

A handler is a plain synchronous function ``handler(call) -> data | Reply``; it runs in
a worker thread inside one transaction (committed for ``write`` routes, aborted for
reads) after :func:`~amphora_kanban.web.auth.authorise` let the call through.
:func:`endpoint` turns it into a Starlette endpoint; the route table in
:mod:`amphora_kanban.web.app` says, per route, its access and whether it writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import amphora
from amphora_kanban.errors import BadInput
from amphora_kanban.site import Site, User
from amphora_kanban.web.auth import (COOKIE, CSRF_HEADER, AuthStore, CookieSigner,
                                     Identity, Passwords, Session, SignInLimiter, auth_of,
                                     authorise)
from amphora_kanban.web.http import ApiError, read_json
from amphora_kanban.web.store import Store, site_of

__all__ = ["Services", "Call", "Reply", "endpoint", "body_field", "session_cookie"]

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Services:
    """What the routes share: the store, password hashing, sign-in limits, cookies."""

    store: Store
    passwords: Passwords
    limiter: SignInLimiter
    cookies: CookieSigner
    secure_cookies: bool | None = None  # None: Secure when the request is https
    session_days: float = 14
    clock: Callable[[], float] = time.time


@dataclass
class Reply:
    """A handler's answer when it is more than JSON with status 200: a status, a
    session to set (``session``: its id and record) or to clear, headers."""

    data: Any
    status: int = 200
    session: tuple[str, Session] | None = None
    clear_session: bool = False
    headers: dict[str, str] | None = None


@dataclass
class Call:
    """One request, as a handler sees it, inside its transaction."""

    request: Request
    services: Services
    conn: amphora.Connection
    body: Any
    identity: Identity
    now: float

    @property
    def site(self) -> Site:
        return site_of(self.conn)

    @property
    def auth(self) -> AuthStore:
        return auth_of(self.conn)

    @property
    def user(self) -> User:
        """The signed-in user (routes that are not public always have one)."""
        if self.identity.user is None:  # authorise() let a public route's caller in
            raise ApiError(401, "not signed in")
        return self.identity.user

    def param(self, name: str) -> str:
        return self.request.path_params[name]

    def field(self, name: str, default: Any = ..., kind: type | None = None) -> Any:
        """Field ``name`` of the JSON body (an object); BadInput naming it when it is
        missing without a ``default`` or not of ``kind``."""
        return body_field(self.body, name, default, kind)


def body_field(body: Any, name: str, default: Any = ..., kind: type | None = None) -> Any:
    if not isinstance(body, dict):
        raise BadInput("body", "must be a JSON object")
    if name not in body:
        if default is ...:
            raise BadInput(name, "is required")
        return default
    value = body[name]
    if kind is not None:
        # (True is an int to Python, not to a JSON client)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise BadInput(name, f"must be a {kind.__name__}")
    return value


def session_cookie(response: Response, request: Request, services: Services,
                   session: tuple[str, Session] | None, clear: bool) -> None:
    """Set (or clear) the session cookie on ``response``: HttpOnly, SameSite=Lax, Path=/,
    Secure on https or when the app was told so."""
    secure = services.secure_cookies
    if secure is None:
        secure = request.url.scheme == "https"
    if session is not None:
        id, record = session
        response.set_cookie(COOKIE, services.cookies.sign(id),
                            max_age=max(int(record.expires - services.clock()), 0),
                            path="/", secure=secure, httponly=True, samesite="lax")
    elif clear:
        response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True,
                               samesite="lax")


def endpoint(handler: Callable[[Call], Any], access: str, write: bool
             ) -> Callable[[Request], Any]:
    """The Starlette endpoint running ``handler`` (see the module docstring)."""
    async def run(request: Request) -> Response:
        services: Services = request.app.state.kanban
        body = await read_json(request) if request.method in BODY_METHODS else None
        session_id = services.cookies.unsign(request.cookies.get(COOKIE))
        csrf = request.headers.get(CSRF_HEADER)

        def work(conn: amphora.Connection) -> Any:
            now = services.clock()
            identity = authorise(conn, site_of(conn), access, request.method, session_id,
                                 csrf, now)
            return handler(Call(request, services, conn, body, identity, now))

        try:
            result = await (services.store.write(work) if write else services.store.read(work))
        except ApiError as exc:
            if exc.status == 401 and session_id is not None:  # an expired session, maybe
                await services.store.write(
                    lambda conn: auth_of(conn).drop_if_expired(session_id, services.clock()))
            raise
        reply = result if isinstance(result, Reply) else Reply(result)
        response = JSONResponse(reply.data, reply.status,
                                {"cache-control": "no-store", **(reply.headers or {})})
        session_cookie(response, request, services, reply.session, reply.clear_session)
        return response
    run.__name__ = handler.__name__
    return run
