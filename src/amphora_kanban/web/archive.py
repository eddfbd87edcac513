"""Searching the bag: archived features found by a word of their own text or of a task's.

``GET /api/boards/{name}/archive?text=WORDS`` answers ``[{feature, tasks, matched}]``:
each archived feature whose title or description, or one of whose tasks', holds every
word (``matched`` lists the ids of the cards that did); all archived features (with
``matched`` empty) when there is no text.

With a JSON mirror holding the text index :data:`TEXT_INDEX` (``amphora kanban serve``
makes both on SQLite and PostgreSQL, see :func:`setup_search`), the words are looked
up in the index (stemmed: "database" finds "databases"); otherwise the bag is scanned,
matching whole words or their beginnings.
"""
from __future__ import annotations

import html
import logging
import re
from typing import Any

import amphora
from amphora_kanban.board import Board
from amphora_kanban.card import Card
from amphora_kanban.web.api import Call
from amphora_kanban.web.boards import with_progress

__all__ = ["TEXT_INDEX", "CARD_CLASS", "setup_search", "search_archive"]

log = logging.getLogger(__name__)

TEXT_INDEX = "kanban_card_text"
CARD_CLASS = f"{Card.__module__}.{Card.__qualname__}"
_WORD = re.compile(r"\w+")
_TAG = re.compile(r"<[^>]*>")


def setup_search(db: amphora.DB) -> bool:
    """Give ``db`` a JSON mirror, when its storage can keep one and has none yet, and the
    cards' text index, when the mirror lacks it (a mirror made before, by ``amphora
    mirror`` or a deployment's follower, has none); whether it made either."""
    if not getattr(db.storage, "supports_mirror", False):
        return False
    made = not db.has_mirror()
    if made:
        db.create_mirror()
    try:
        db.create_text_index(TEXT_INDEX, ["title", "description"], class_name=CARD_CLASS)
    except amphora.InvalidQueryError as exc:
        if "already exists" not in str(exc):  # (SQLite's and PostgreSQL's words)
            raise
        return made
    return True


def _indexed(conn: amphora.Connection, words: list[str]) -> list[Card] | None:
    """The cards whose text holds every word, from the text index; None without one."""
    # Each word quoted: the same query on SQLite's FTS5 and PostgreSQL's websearch syntax,
    # and no word is taken for an operator.
    query = " ".join(f'"{w}"' for w in words)
    try:
        return list(conn.search_text(TEXT_INDEX, query, limit=None))
    except (amphora.MirrorError, amphora.InvalidQueryError) as exc:
        log.debug("archive search by scanning: %s", exc)
        return None


def _holds(card: Card, words: list[str]) -> bool:
    text = f"{card.title} {html.unescape(_TAG.sub(' ', card.description or ''))}"
    tokens = _WORD.findall(text.casefold())
    return all(any(t.startswith(w) for t in tokens) for w in words)


def _matches(conn: amphora.Connection, board: Board, words: list[str]
             ) -> dict[str, list[str]]:
    """Archived feature id -> the ids of its cards (itself, its tasks) that match."""
    found: dict[str, list[str]] = {}
    cards = _indexed(conn, words)
    for feature in board.archived():
        bag = board.bagged(feature.id)
        if cards is None:
            hits = [c.id for c in bag if _holds(c, words)]
        else:
            ids = {c.id for c in bag}
            hits = [c.id for c in cards if c.id in ids]
        if hits:
            found[feature.id] = hits
    return found


def search_archive(call: Call) -> list[dict[str, Any]]:
    """``GET /api/boards/{name}/archive?text=WORDS`` (see the module docstring)."""
    board = call.site.board(call.param("name"))
    text = (call.request.query_params.get("text") or "").strip()
    words = [w.casefold() for w in _WORD.findall(text)]
    matches = (_matches(call.conn, board, words) if words
               else {f.id: [] for f in board.archived()} if not text else {})
    results = []
    for feature in board.archived():
        if feature.id in matches:
            bag = [c.to_json() for c in board.bagged(feature.id)]
            with_progress(board, bag[:1], bag)
            results.append({"feature": bag[0], "tasks": bag[1:],
                            "matched": matches[feature.id]})
    return results
