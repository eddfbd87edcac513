"""Time travel: a board as it was at a past moment, read from the database's history.

``GET /api/boards/{name}?at=...`` opens a historical, read-only connection
(``db.open(at=moment)``) and answers with the board it sees, plus ``"at"``. A moment is
ISO 8601 (``2026-05-01T12:00:00Z``; without an offset, UTC) or seconds since the epoch.
A storage that keeps no history answers 400 naming ``at``; a moment before the board
existed, 404.
"""
from __future__ import annotations

import datetime
from typing import Any, Callable

import amphora
from amphora_kanban.board import Board
from amphora_kanban.errors import BadInput, NotFound
from amphora_kanban.web.store import Store, site_of

__all__ = ["parse_moment", "board_at"]

_UTC = datetime.timezone.utc


def parse_moment(value: str, field: str = "at") -> datetime.datetime:
    """An aware UTC datetime from ISO 8601 or epoch seconds (BadInput naming ``field``)."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    try:
        if seconds is not None:
            return datetime.datetime.fromtimestamp(seconds, _UTC)
        # (Python 3.10's fromisoformat does not read a final Z)
        moment = datetime.datetime.fromisoformat(
            text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except (ValueError, OverflowError, OSError):
        raise BadInput(field, f"must be an ISO 8601 time or seconds since the epoch, "
                              f"not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    return moment.astimezone(_UTC)


def board_at(store: Store, name: str, at: str,
             board_json: Callable[[Board], dict[str, Any]]) -> dict[str, Any]:
    """``board_json`` of board ``name`` as it was at ``at`` (see the module docstring).
    Runs in a worker thread."""
    moment = parse_moment(at)

    def read(conn: amphora.Connection) -> dict[str, Any]:
        try:
            board = site_of(conn).board(name)
            return board_json(board)
        except (NotFound, amphora.ObjectNotFoundError, amphora.ReadConflictError):
            # (before the site, or the database itself, was made: no revision then)
            raise NotFound("board", f"{name} at {moment.isoformat()}") from None

    try:
        data = store.read_at_now(moment, read)
    except amphora.Unsupported as exc:
        raise BadInput("at", str(exc)) from None
    return {**data, "at": moment.isoformat()}
