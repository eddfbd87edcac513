"""Live updates: Server-Sent Events of a board's changes, driven by the change feed.

``GET /api/boards/{name}/events?generation=N`` streams ``text/event-stream`` messages::

    id: <generation>
    event: board
    data: <JSON of Board.changes_since(N)>: {generation, full, states, cards, removed}

The first comes at once when the board is past N (or N is absent or too old: the whole
board, ``full: true``); then one after each change. A ``Last-Event-ID`` header (sent by
a reconnecting EventSource) overrides ``generation``. ``: ping`` comment lines keep the
connection open when nothing happens. Features in a message carry ``progress``, and a
message about a task also carries its feature (whose progress it changed).

One :class:`LiveHub` per app holds one subscription to the database (``db.subscribe``):
after each commit, from the database's thread, it reads the generation of every board
that has listeners in a fresh transaction (a generation is final only once committed,
see :mod:`amphora_kanban.changes`) and wakes that board's listeners in the event loop.
A listener then sends ``changes_since`` its own generation and advances; listeners at
the same generation share one read. The hub also looks every ``poll_interval`` seconds,
so that a wake-up missed (a feed that fell behind, a commit of another process the feed
has not reached) never loses an update. Streams end when the client goes away or the
hub closes (at shutdown).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import amphora
from amphora_kanban.board import Board
from amphora_kanban.errors import BadInput, NotFound
from amphora_kanban.web.boards import board_json, with_progress
from amphora_kanban.web.http import ApiError, error_response
from amphora_kanban.web.pages import signed_in_user
from amphora_kanban.web.store import Store, site_of

__all__ = ["LiveHub", "events", "delta_json", "message"]

log = logging.getLogger(__name__)


def delta_json(board: Board, since: int) -> dict[str, Any]:
    """``board.changes_since(since)``, the whole board (with name, title and created)
    when full, with progress on features and the features of the tasks in it."""
    data = board.changes_since(since)
    if data["full"]:
        return {**board_json(board), "full": True, "removed": []}
    present = {c["id"] for c in data["cards"]}
    for parent in sorted({c["parent"] for c in data["cards"] if c["parent"]} - present):
        try:
            data["cards"].append(board.card(parent).to_json())
        except NotFound:
            continue
    with_progress(board, data["cards"])
    return data


def message(data: dict[str, Any]) -> str:
    """One SSE message of a delta."""
    return (f"id: {data['generation']}\nevent: board\n"
            f"data: {json.dumps(data, separators=(',', ':'))}\n\n")


class LiveHub:
    """The listeners of every board, woken by commits (see the module docstring)."""

    def __init__(self, store: Store, poll_interval: float = 2.0, ping_interval: float = 15.0):
        self.store = store
        self.poll_interval = poll_interval
        self.ping_interval = ping_interval
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self._seen: dict[str, int | None] = {}  # board -> its generation last read
        self._deltas: dict[tuple[str, int], asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task | None = None
        self._closed = False

    # -- the database side ----------------------------------------------------------------
    def _start(self) -> None:
        """At the first listener, in the event loop: subscribe, and start polling."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            self.store.db.subscribe(self._committed)
        except Exception:  # the fallback poll still delivers every update
            log.exception("live updates: no change feed; polling only")
        self._poller = self._loop.create_task(self._poll())

    def _generations(self, names: list[str]) -> dict[str, int | None]:
        """The current generation of each board (None: gone), from a fresh transaction."""
        def read(conn: amphora.Connection) -> dict[str, int | None]:
            site = site_of(conn)
            found: dict[str, int | None] = {}
            for name in names:
                try:
                    found[name] = site.board(name).generation
                except NotFound:
                    found[name] = None
            return found
        return self.store.read_now(read)

    def _committed(self, change: amphora.Change) -> None:
        """A transaction committed (called in a thread of the database)."""
        names = list(self._listeners)
        if self._closed or not names:
            return
        try:
            generations = self._generations(names)
            self._loop.call_soon_threadsafe(self._advance, generations)
        except RuntimeError:  # the loop closed meanwhile
            pass
        except Exception:
            log.exception("live updates: reading generations after a commit")

    async def _poll(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            names = list(self._listeners)
            if names and not self._closed:
                try:
                    self._advance(await run_in_threadpool(self._generations, names))
                except Exception:
                    log.exception("live updates: polling")

    def _advance(self, generations: dict[str, int | None]) -> None:
        """In the loop: wake the listeners of the boards that moved on."""
        for name, generation in generations.items():
            if name in self._seen and self._seen[name] == generation:
                continue
            self._seen[name] = generation
            for key in [k for k in self._deltas if k[0] == name]:
                del self._deltas[key]
            for event in self._listeners.get(name, ()):
                event.set()

    # -- the listeners' side ----------------------------------------------------------------
    async def _delta(self, name: str, since: int) -> dict[str, Any]:
        key = (name, since)
        future = self._deltas.get(key)
        if future is None:
            future = self._deltas[key] = asyncio.ensure_future(self.store.read(
                lambda conn: delta_json(site_of(conn).board(name), since)))
        try:
            return await asyncio.shield(future)
        except Exception:
            self._deltas.pop(key, None)
            raise

    async def stream(self, name: str, since: int | None) -> AsyncIterator[str]:
        """The SSE text of board ``name`` for a client at generation ``since``."""
        self._start()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._listeners.setdefault(name, set()).add(wake)
        sent = -1 if since is None else since
        last = loop.time()
        try:
            while not self._closed:
                wake.clear()
                try:
                    data = await self._delta(name, sent)
                except NotFound:
                    return  # the board is gone
                if data["full"] or data["generation"] != sent:
                    yield message(data)
                    sent, last = data["generation"], loop.time()
                try:
                    await asyncio.wait_for(wake.wait(),
                                           max(self.ping_interval - (loop.time() - last), 0))
                except asyncio.TimeoutError:
                    yield ": ping\n\n"
                    last = loop.time()
        finally:
            listeners = self._listeners.get(name)
            if listeners is not None:
                listeners.discard(wake)
                if not listeners:
                    del self._listeners[name]
                    self._seen.pop(name, None)

    def close_soon(self) -> None:
        """:meth:`close` from any thread (a signal handler, say)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every stream and stop listening to the database (in the event loop)."""
        if self._closed:
            return
        self._closed = True
        self.store.db.unsubscribe(self._committed)
        if self._poller is not None:
            self._poller.cancel()
        for listeners in self._listeners.values():
            for event in listeners:
                event.set()


def _generation(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadInput(field, f"must be an integer, not {value!r}") from None


async def events(request: Request) -> Response:
    """``GET /api/boards/{name}/events?generation=N`` (signed in)."""
    try:
        if await signed_in_user(request) is None:
            raise ApiError(401, "not signed in")
        name = request.path_params["name"]
        since = _generation(request.query_params.get("generation"), "generation")
        try:  # a reconnecting EventSource says where it was; a garbled id counts as none
            since = _generation(request.headers.get("last-event-id"), "Last-Event-ID") \
                if request.headers.get("last-event-id") else since
        except BadInput:
            since = None
        hub: LiveHub = request.app.state.live
        await hub.store.read(lambda conn: site_of(conn).board(name))
    except Exception as exc:
        return error_response(exc)
    return StreamingResponse(hub.stream(name, since), media_type="text/event-stream",
                             headers={"cache-control": "no-cache",
                                      "x-accel-buffering": "no"})
