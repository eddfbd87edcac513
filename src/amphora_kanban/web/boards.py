"""The board routes: boards, states, cards, comments, the bag, metrics, export/import.

Each handler parses its request, calls one model method and answers with JSON; the
model enforces the rules and raises its errors (mapped to statuses in
:mod:`amphora_kanban.web.http`). Responses that change a board carry its
``generation`` as read in the transaction: a lower bound of the generation the change
got (a commit merged with a concurrent one is renumbered after it), so a client that
uses it as "seen" is at worst sent a change twice, never misses one.
"""
from __future__ import annotations

import datetime
from typing import Any

from amphora_kanban import text
from amphora_kanban.board import Board
from amphora_kanban.card import Card, iso
from amphora_kanban.errors import BadInput, NotFound, RuleViolation
from amphora_kanban.metrics import flow_metrics
from amphora_kanban.transfer import export_board
from amphora_kanban.web.api import Call, Reply
from amphora_kanban.web.history import board_at

__all__ = ["board_json", "card_json", "with_progress", "list_boards", "create_board",
           "get_board", "put_states", "add_card", "get_card", "patch_card", "move_card",
           "comment", "archive", "restore", "metrics", "export", "import_board"]

METRICS_DAYS = 30       # the default span of the metrics
METRICS_MAX_DAYS = 731  # the longest span asked at once (the CFD has a point per day)


# -- JSON ---------------------------------------------------------------------------------

def with_progress(board: Board, cards: list[dict[str, Any]],
                  all_cards: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``cards`` (card JSON) with ``progress: {complete, total}`` added to each feature,
    summed over the tasks among ``all_cards`` (default: the board's live cards)."""
    complete = {s.id for s in board.states() if s.complete}
    totals: dict[str, list[int]] = {}
    for task in all_cards if all_cards is not None else (c.to_json() for c in board.cards()):
        if task["parent"] is not None:
            total = totals.setdefault(task["parent"], [0, 0])
            total[1] += task["size"]
            if task["state"] in complete:
                total[0] += task["size"]
    for card in cards:
        if card["parent"] is None:
            done, total = totals.get(card["id"], (0, 0))
            card["progress"] = {"complete": done, "total": total}
    return cards


def board_json(board: Board) -> dict[str, Any]:
    """``{name, title, created, generation, states, cards}``, features with progress."""
    data = board.to_json()
    with_progress(board, data["cards"], data["cards"])
    created = board.created
    return {"name": board.name, "title": board.title,
            "created": None if created is None else iso(created), **data}


def card_json(board: Board, card: Card, full: bool = False) -> dict[str, Any]:
    """A live card's JSON (with history and comments when ``full``), a feature's
    progress."""
    data = card.to_json_full() if full else card.to_json()
    if card.parent is None:
        data["progress"] = board.progress(card.id)
    return data


def _changed(board: Board, card: Card, warnings: list[dict[str, Any]]) -> dict[str, Any]:
    return {**card_json(board, card), "warnings": warnings, "generation": board.generation}


# -- boards -------------------------------------------------------------------------------

def list_boards(call: Call) -> list[dict[str, str]]:
    """``GET /api/boards``."""
    return [{"name": b.name, "title": b.title}
            for b in sorted(call.site.boards(), key=lambda b: b.name)]


def create_board(call: Call) -> Reply:
    """``POST /api/boards {name, title, states?}`` (admin)."""
    board = call.site.add_board(call.field("name"), call.field("title"),
                                call.field("states", None))
    return Reply(board_json(board), 201)


def get_board(call: Call) -> dict[str, Any]:
    """``GET /api/boards/{name}[?at=ISO|epoch]``: the board now, or as it was."""
    name = call.param("name")
    at = call.request.query_params.get("at")
    if at is None:
        return {**board_json(call.site.board(name)),
                "users": [u.to_json() for u in call.site.users()]}
    return board_at(call.services.store, name, at, board_json)


def put_states(call: Call) -> dict[str, Any]:
    """``PUT /api/boards/{name}/states [state, ...]`` (admin): the whole ordered list.
    Listed states keep their id and take the fields given; new ones are added; missing
    ones are removed (409 while they hold cards). All or nothing."""
    board = call.site.board(call.param("name"))
    states = call.body
    if not isinstance(states, list) or not states or not all(
            isinstance(s, dict) for s in states):
        raise BadInput("states", "must be a non-empty list of state objects")
    existing = {s.id for s in board.states()}
    listed = [s.get("id") if s.get("id") in existing else None for s in states]
    kept = [id for id in listed if id is not None]
    if len(kept) != len(set(kept)):
        raise BadInput("states", "lists a state twice")
    order = list(listed)
    for i, data in enumerate(states):  # new ones first: a board keeps a feature state
        if listed[i] is None:
            order[i] = board.add_state(data).id
    for id, data in zip(listed, states):
        if id is not None:
            board.update_state(id, data)
    for id in sorted(existing - set(kept)):
        board.remove_state(id)
    board.reorder_states(order)
    return board_json(board)


# -- cards --------------------------------------------------------------------------------

def _board(call: Call) -> Board:
    return call.site.board(call.param("name"))


def add_card(call: Call) -> Reply:
    """``POST /api/boards/{name}/cards {title, size?, parent?, state?, description?}``."""
    board = _board(call)
    result = board.add_card(call.body, by=call.user.id, now=call.now)
    return Reply(_changed(board, result.card, result.warnings), 201)


def get_card(call: Call) -> dict[str, Any]:
    """``GET /api/boards/{name}/cards/{id}``: with history, comments and progress."""
    board = _board(call)
    return card_json(board, board.card(call.param("id")), full=True)


def patch_card(call: Call) -> dict[str, Any]:
    """``PATCH /api/boards/{name}/cards/{id} {title?, description?, size?, blocked?,
    assignee?}``; an assignee must be a user of the site."""
    board = _board(call)
    assignee = call.field("assignee", None)
    if assignee is not None:
        try:
            call.site.user(assignee)
        except NotFound:
            raise BadInput("assignee", f"no user {assignee!r}") from None
    card = board.update_card(call.param("id"), call.body, by=call.user.id)
    return {**card_json(board, card), "generation": board.generation}


def move_card(call: Call) -> dict[str, Any]:
    """``POST .../cards/{id}/move {state, parent, before}``: ``before`` is the card it
    goes in front of in the target column, or null for the end; ``state`` and ``parent``
    default to the card's own."""
    board = _board(call)
    card = board.card(call.param("id"))
    state = call.field("state", card.state, str)
    parent = call.field("parent", card.parent)
    if parent is not None and not isinstance(parent, str):
        raise BadInput("parent", "must be a card id or null")
    before = call.field("before", None)
    position = None
    if before is not None:
        ids = [c.id for c in board.column(state, parent, without=card)]
        if before not in ids:
            if before == card.id:
                raise BadInput("before", "a card cannot go in front of itself")
            try:
                board.card(before)
            except NotFound:
                raise BadInput("before", f"{before!r} is not a card of this board") from None
            # A card of the board, elsewhere: it moved since the client looked (a race).
            raise RuleViolation("before-elsewhere", f"the card to go in front of is no "
                                "longer in the target column")
        position = ids.index(before)
    result = board.move(card.id, state, parent, position, by=call.user.id, now=call.now)
    return _changed(board, result.card, result.warnings)


def comment(call: Call) -> Reply:
    """``POST .../cards/{id}/comments {body}``: the comment (HTML, sanitised)."""
    body = call.field("body")
    if not isinstance(body, str) or not body.strip():
        raise BadInput("body", "must be a non-empty string")
    made = _board(call).comment(call.param("id"), body, by=call.user.id, now=call.now)
    return Reply({**made, "at": iso(made["at"])}, 201)


def archive(call: Call) -> dict[str, Any]:
    """``POST .../cards/{id}/archive``: the feature and its tasks go to the bag."""
    board = _board(call)
    id = call.param("id")
    board.archive(id, by=call.user.id, now=call.now)
    return {"archived": [c.id for c in board.bagged(id)], "generation": board.generation}


def restore(call: Call) -> dict[str, Any]:
    """``POST .../cards/{id}/restore``: the feature (and its tasks) back on the board."""
    board = _board(call)
    feature = board.restore(call.param("id"), by=call.user.id, now=call.now)
    return {**card_json(board, feature), "generation": board.generation}


# -- metrics, export, import ------------------------------------------------------------

def _date(call: Call, name: str, default: datetime.date) -> datetime.date:
    value = call.request.query_params.get(name)
    if value is None:
        return default
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise BadInput(name, f"must be a date YYYY-MM-DD, not {value!r}") from None


def metrics(call: Call) -> dict[str, Any]:
    """``GET .../metrics?from=YYYY-MM-DD&to=YYYY-MM-DD`` (default: the last 30 days)."""
    board = _board(call)
    today = datetime.datetime.fromtimestamp(call.now, datetime.timezone.utc).date()
    last = _date(call, "to", today)
    first = _date(call, "from", last - datetime.timedelta(days=METRICS_DAYS - 1))
    if first > last:
        raise BadInput("from", "must not be after to")
    if (last - first).days >= METRICS_MAX_DAYS:
        raise BadInput("from", f"the span must be at most {METRICS_MAX_DAYS} days")
    return {"from": first.isoformat(), "to": last.isoformat(),
            "states": [s.to_json() for s in board.states()],
            **flow_metrics(board, first, last)}


def export(call: Call) -> Reply:
    """``GET .../export`` (admin): the board as an export document, offered as the file
    ``NAME-YYYY-MM-DD.json``."""
    board = _board(call)
    day = datetime.datetime.fromtimestamp(call.now, datetime.timezone.utc).date()
    return Reply(export_board(board), headers={
        "content-disposition": f'attachment; filename="{board.name}-{day}.json"'})


def import_board(call: Call) -> Reply:
    """``POST /api/boards/import {name?, title?, data}`` (admin): a new board from an
    export, named and titled as exported unless ``name`` or ``title`` say otherwise."""
    name = call.field("name", None)
    if name is not None and not isinstance(name, str):
        raise BadInput("name", "must be a string")
    title = call.field("title", None)
    if title is not None:
        title = text.title(title)  # checked before anything is built
    board = call.site.import_board(call.field("data"), name)
    if title is not None:
        board.title = title
    return Reply(board_json(board), 201)
