"""Board export and import as JSON.

The export is everything needed to rebuild the board elsewhere::

    {"format": "amphora-kanban/1",
     "board": {"name", "title"},
     "states": [<state JSON>, ...],                       # in board order
     "cards": [<card JSON> + {"history", "comments"}, ...],  # live cards
     "archive": [[<feature>, <its tasks>...], ...]}        # the bag

History and comment times are numbers (seconds since the epoch, UTC), so an import
gives back exactly the exported board. Importing checks the document as it goes and
refuses it with :class:`~amphora_kanban.errors.BadInput` naming the faulty part;
the board's generation starts again (clients reload the whole board).
"""
from __future__ import annotations

from typing import Any

from amphora_kanban.board import Board
from amphora_kanban.card import Card
from amphora_kanban.errors import BadInput, KanbanError
from amphora_kanban.ordering import is_key

__all__ = ["FORMAT", "export_board", "import_board"]

FORMAT = "amphora-kanban/1"


def _card_export(card: Card) -> dict[str, Any]:
    return {**card.to_json(), "history": [dict(e) for e in card.history],
            "comments": [dict(c) for c in card.comments]}


def export_board(board: Board) -> dict[str, Any]:
    """The board as a JSON-ready dict (see the module docstring)."""
    return {"format": FORMAT,
            "board": {"name": board.name, "title": board.title},
            "states": [s.to_json() for s in board.states()],
            "cards": [_card_export(c) for c in board.cards()],
            "archive": [[_card_export(c) for c in board.bagged(f.id)]
                        for f in board.archived()]}


def _require(data: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise BadInput(f"{where}.{key}", f"must be a {kind.__name__}")
    return data[key]


def _records(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(
            isinstance(r, dict) and isinstance(r.get("at"), (int, float))
            and not isinstance(r.get("at"), bool) for r in value):
        raise BadInput(where, "must be a list of objects each with a numeric 'at'")
    return tuple(dict(r) for r in value)


def _card(board: Board, data: Any, where: str, live: bool) -> Card:
    if not isinstance(data, dict):
        raise BadInput(where, "must be an object")
    id = _require(data, "id", str, where)
    position = data.get("position")
    if not is_key(position):
        raise BadInput(f"{where}.position", f"{position!r} is not an ordering key")
    state = _require(data, "state", str, where)
    parent = data.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise BadInput(f"{where}.parent", "must be a card id or null")
    # A bagged card may name a state removed since; restoring it picks another.
    if live and state not in board._states:
        raise BadInput(f"{where}.state", f"no state {state!r} on the board")
    if live and board._states[state].task != (parent is not None):
        raise BadInput(f"{where}.state", "a feature must be in a feature state and a "
                                         "task in a task state")
    try:
        fields = board._card_fields({k: data.get(k) for k in
                                     ("title", "description", "size", "blocked", "assignee")})
    except BadInput as exc:
        raise BadInput(f"{where}.{exc.field}", str(exc)) from exc
    card = Card(id, fields.pop("title"), state, position, parent=parent)
    for key, value in fields.items():
        setattr(card, key, value)
    card.history = _records(data.get("history", []), f"{where}.history")
    card.comments = _records(data.get("comments", []), f"{where}.comments")
    return card


def import_board(data: Any, name: str | None = None) -> Board:
    """A new board built from an export (named ``name``, default the exported name).

    Raises BadInput naming the first faulty part; nothing is stored by this function
    (the caller adds the board to a site).
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadInput("format", f"must be {FORMAT!r}")
    meta = _require(data, "board", dict, "export")
    states = _require(data, "states", list, "export")
    try:
        board = Board(name or _require(meta, "name", str, "board"),
                      _require(meta, "title", str, "board"), states)
    except KanbanError as exc:
        raise BadInput("states", str(exc)) from exc
    cards = {}
    for i, item in enumerate(_require(data, "cards", list, "export")):
        card = _card(board, item, f"cards[{i}]", live=True)
        if card.id in cards:
            raise BadInput(f"cards[{i}].id", f"duplicate card id {card.id!r}")
        cards[card.id] = card
    for id, card in cards.items():
        if card.parent is not None and (card.parent not in cards
                                        or cards[card.parent].parent is not None):
            raise BadInput("cards", f"task {id!r} has no feature {card.parent!r}")
    for id, card in cards.items():
        board._cards[id] = card
        board._changed("card", id)
    for i, group in enumerate(_require(data, "archive", list, "export")):
        if not isinstance(group, list) or not group:
            raise BadInput(f"archive[{i}]", "must be a non-empty list: a feature, its tasks")
        bagged = tuple(_card(board, item, f"archive[{i}][{j}]", live=False)
                       for j, item in enumerate(group))
        if bagged[0].parent is not None or any(t.parent != bagged[0].id for t in bagged[1:]):
            raise BadInput(f"archive[{i}]", "must be a feature followed by its own tasks")
        board._archive[bagged[0].id] = bagged
    return board
