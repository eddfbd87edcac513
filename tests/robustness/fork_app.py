"""A WSGI application for ``gunicorn --preload`` (see ``test_fork.py``): the database is
opened when gunicorn imports this module, in the arbiter, before it forks its workers.

``POST /increment`` adds one to ``root["counter"]`` (a :class:`Counter` without conflict
resolution) in a transaction, retrying conflicts; ``GET /count`` answers its value. Both
answer JSON ``{"count": ..., "pid": ...}`` (``pid``: the worker that answered).

The database's URI is the environment variable ``AMPHORA_FORK_APP_URI``.
"""
from __future__ import annotations

import json
import os

import amphora
from robustness_support import Counter

_ATTEMPTS = 1000

db = amphora.open(os.environ["AMPHORA_FORK_APP_URI"])
with db.transaction() as _conn:  # used in the arbiter before the fork
    if not isinstance(_conn.root().get("counter"), Counter):
        _conn.root()["counter"] = Counter(0)


def _increment() -> int:
    for _ in range(_ATTEMPTS):
        try:
            with db.transaction() as conn:
                counter = conn.root()["counter"]
                counter.value += 1
                value = counter.value
            return value
        except amphora.ConflictError:
            continue
    raise RuntimeError(f"still conflicting after {_ATTEMPTS} attempts")


def _count() -> int:
    with db.transaction() as conn:
        return conn.root()["counter"].value


def app(environ, start_response):
    route = (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
    if route == ("POST", "/increment"):
        count = _increment()
    elif route == ("GET", "/count"):
        count = _count()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps({"count": count, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
