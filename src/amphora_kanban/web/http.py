"""HTTP plumbing shared by every route: errors as JSON, request bodies, security headers.

:func:`error_response` is the one place where an exception becomes a status::

    BadInput (model)        400  {"error", "field"}
    NotFound (model)        404  {"error"}
    RuleViolation (model)   409  {"error", "rule"}
    ApiError                its status (401, 403, 429 ...), {"error"} and its headers
    HTTPException           its status (Starlette's 404 for an unknown path, 405 ...)
    anything else           500  {"error": "internal error"}, logged with its traceback

:class:`SecurityHeaders` wraps the whole app: it adds the security headers to every
response and turns an exception that escaped everything else into that 500.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amphora_kanban.errors import BadInput, KanbanError, NotFound, RuleViolation

__all__ = ["ApiError", "error_response", "read_json", "SecurityHeaders", "SECURITY_HEADERS",
           "MAX_BODY"]

log = logging.getLogger("amphora_kanban.web")

MAX_BODY = 32 * 1024 * 1024  # an import of a large board fits; anything bigger is refused

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; object-src 'none'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


class ApiError(Exception):
    """A refusal that is not the model's: not signed in (401), not allowed (403), too
    many attempts (429), database unavailable (503)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_response(exc: BaseException) -> Response:
    """The JSON response for ``exc`` (see the module docstring)."""
    headers = {"cache-control": "no-store"}
    if isinstance(exc, BadInput):
        return JSONResponse({"error": str(exc), "field": exc.field}, 400, headers)
    if isinstance(exc, RuleViolation):
        return JSONResponse({"error": str(exc), "rule": exc.rule}, 409, headers)
    if isinstance(exc, NotFound):
        return JSONResponse({"error": str(exc)}, 404, headers)
    if isinstance(exc, KanbanError):  # a future subclass: still the client's doing
        return JSONResponse({"error": str(exc)}, 400, headers)
    if isinstance(exc, ApiError):
        return JSONResponse({"error": str(exc)}, exc.status, {**headers, **exc.headers})
    if isinstance(exc, HTTPException):
        return JSONResponse({"error": exc.detail}, exc.status_code,
                            {**headers, **(exc.headers or {})})
    log.error("internal error", exc_info=exc)
    return JSONResponse({"error": "internal error"}, 500, headers)


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc)


EXCEPTION_HANDLERS = {KanbanError: _handle, ApiError: _handle, HTTPException: _handle}


async def read_json(request: Request) -> Any:
    """The request's JSON body; an empty body is None. BadInput naming ``body`` when it
    is not JSON or too large."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise BadInput("body", f"is larger than {MAX_BODY} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise BadInput("body", f"is larger than {MAX_BODY} bytes")
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput("body", f"is not valid JSON ({exc})") from exc


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, and a 500 for what no
    handler caught (logged; the client never sees a traceback)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name.encode(), value.encode())
                         for name, value in SECURITY_HEADERS.items()
                         if name.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            response = error_response(exc)  # logs it
            if not started:
                await response(scope, receive, send_with_headers)
