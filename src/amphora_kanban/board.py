"""A board: its states, its live cards, its archive ("the bag") and its change log.

The board object itself holds only the order of its states and references to BTrees;
cards are separate persistent objects. Moving or editing a card writes that card and
the change log's small head (merged when two transactions append at once), never the
board, so people working on different cards of one board do not conflict.

Rules enforced here (each refusal is a :class:`~amphora_kanban.errors.RuleViolation`
naming its rule):

``feature-state``       a feature (no parent) lives in a feature state
``task-state``          a task lives in a task state
``two-levels``          a task's parent is a feature, never a task or itself
``feature-with-tasks``  a feature that has tasks cannot become a task
``wip-limit``           a move or new card over a hard WIP limit (a soft one warns);
                        concurrent entries into a hard-limited state conflict, so that
                        the limit holds when both commit (the retry counts again)
``state-not-empty``     a state holding cards cannot be removed, nor switch tiers
``archive-features``    only features are archived (with their tasks)
``last-state``          a board keeps at least one feature state
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from BTrees.OOBTree import OOBTree
from persistent import Persistent

from amphora_kanban import text
from amphora_kanban.card import Card
from amphora_kanban.changes import ChangeLog
from amphora_kanban.errors import BadInput, NotFound, RuleViolation
from amphora_kanban.ordering import key_between
from amphora_kanban.state import DEFAULT_STATES, State, WipLimit, slug

__all__ = ["Board", "Result"]

CARD_FIELDS = ("title", "description", "size", "blocked", "assignee")


@dataclass
class Result:
    """What a change to a card did: the card, and warnings (soft WIP limits exceeded),
    each ``{"rule", "state", "message"}``."""

    card: Card
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _check_position(position: object) -> None:
    if position is not None and (isinstance(position, bool)
                                 or not isinstance(position, int) or position < 0):
        raise BadInput("position", f"must be a non-negative integer or null, not "
                                   f"{position!r}")


def _now(now: float | None) -> float:
    return time.time() if now is None else now


class Board(Persistent):
    """A Kanban board. ``states`` (a list of JSON state dicts, in order) defaults to
    :data:`~amphora_kanban.state.DEFAULT_STATES`."""

    # Boards made before ``created`` was recorded have none of their own: see created.
    _created: float | None = None

    def __init__(self, name: str, title: str, states: Iterable[dict[str, Any]] | None = None,
                 now: float | None = None):
        self.name = name
        self.title = text.title(title)
        self._created = _now(now)
        self._states = OOBTree()
        self._state_order: tuple[str, ...] = ()
        self._cards = OOBTree()
        self._archive = OOBTree()  # feature id -> (feature, *tasks)
        self._log = ChangeLog()
        for data in DEFAULT_STATES if states is None else states:
            self.add_state(data)
        if not any(not s.task for s in self.states()):
            raise BadInput("states", "a board needs at least one feature state")

    @property
    def created(self) -> float | None:
        """When the board was made (seconds since the epoch); for a board older than
        this attribute, its earliest card event (live or archived), or None."""
        if self._created is not None:
            return self._created
        cards = list(self._cards.values()) + [c for bag in self._archive.values() for c in bag]
        return min((e["at"] for c in cards for e in c.history), default=None)

    # -- generations ------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped by every change to the board's states and cards."""
        return self._log.generation

    def _changed(self, kind: str, id: str) -> None:
        self._log.record(kind, id)

    def changes_since(self, generation: int) -> dict[str, Any]:
        """What changed after ``generation``: ``{"generation", "full": False, "states",
        "cards", "removed"}`` with the current JSON of every state and card touched since
        (in board order) and the ids of those gone; or, when ``generation`` is older than
        the log (or unknown), the whole board with ``"full": True`` and no ``removed``."""
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise BadInput("generation", f"must be an integer, not {generation!r}")
        entries = self._log.since(generation)
        if entries is None:
            return {**self.to_json(), "full": True, "removed": []}
        touched = {(kind, id) for _, kind, id in entries}
        states = [s.to_json() for s in self.states() if ("state", s.id) in touched]
        cards = [c.to_json() for c in self.cards() if ("card", c.id) in touched]
        removed = sorted(id for kind, id in touched
                         if (kind == "state" and id not in self._states)
                         or (kind == "card" and id not in self._cards))
        return {"generation": self.generation, "full": False, "states": states,
                "cards": cards, "removed": removed}

    def to_json(self) -> dict[str, Any]:
        """``{generation, states, cards}``: the states in order, the live cards."""
        return {"generation": self.generation,
                "states": [s.to_json() for s in self.states()],
                "cards": [c.to_json() for c in self.cards()]}

    # -- states -----------------------------------------------------------------------

    def states(self) -> list[State]:
        """The states in board order."""
        return [self._states[id] for id in self._state_order]

    def state(self, id: object) -> State:
        state = self._states.get(id) if isinstance(id, str) else None
        if state is None:
            raise NotFound("state", id)
        return state

    def add_state(self, data: dict[str, Any], position: int | None = None) -> State:
        """Add a state from its JSON fields (``title`` required; ``id`` defaults to a
        slug of the title, made unique), at index ``position`` (None: last)."""
        if not isinstance(data, dict):
            raise BadInput("state", "must be an object")
        title = text.title(data.get("title"))
        if "id" in data:
            id = data["id"]
            if not isinstance(id, str) or slug(id) != id:
                raise BadInput("id", f"must be lower-case words joined by '-', not {id!r}")
            if id in self._states:
                raise BadInput("id", f"a state {id!r} exists already")
        else:
            id = base = slug(title)
            n = 1
            while id in self._states:
                n += 1
                id = f"{base}-{n}"
        state = State(id, title)
        state.update({k: v for k, v in data.items() if k not in ("id", "title")})
        order = list(self._state_order)
        _check_position(position)
        order.insert(len(order) if position is None else position, id)
        self._states[id] = state
        self._state_order = tuple(order)
        self._changed("state", id)
        return state

    def update_state(self, id: str, changes: dict[str, Any]) -> State:
        """Rename a state, change its flags or WIP limit. A state holding cards keeps its
        tier (``task``)."""
        state = self.state(id)
        if not isinstance(changes, dict):
            raise BadInput("state", "must be an object")
        if "id" in changes and changes["id"] != id:
            raise BadInput("id", "a state's id cannot change")
        changes = {k: v for k, v in changes.items() if k != "id"}
        if changes.get("task", state.task) != state.task and self._in_state(id):
            raise RuleViolation("state-not-empty",
                                f"state {state.title!r} holds cards: it cannot switch tiers")
        if changes.get("task") is True and not state.task and not any(
                not s.task for s in self.states() if s.id != id):
            raise RuleViolation("last-state", "a board keeps at least one feature state")
        state.update(changes)
        self._changed("state", id)
        return state

    def reorder_states(self, ids: list[str]) -> list[State]:
        """Put the states in the order of ``ids`` (all of them, each once)."""
        if not isinstance(ids, list) or sorted(ids, key=str) != sorted(self._state_order):
            raise BadInput("states", "must list every state id of the board exactly once")
        self._state_order = tuple(ids)
        for id in ids:
            self._changed("state", id)
        return self.states()

    def remove_state(self, id: str) -> None:
        """Remove a state that holds no live card."""
        state = self.state(id)
        if self._in_state(id):
            raise RuleViolation("state-not-empty",
                                f"state {state.title!r} holds cards: move them first")
        if not state.task and not any(not s.task for s in self.states() if s.id != id):
            raise RuleViolation("last-state", "a board keeps at least one feature state")
        del self._states[id]
        self._state_order = tuple(s for s in self._state_order if s != id)
        self._changed("state", id)

    def _in_state(self, id: str) -> list[Card]:
        return [c for c in self._cards.values() if c.state == id]

    def _first_state(self, task: bool) -> State:
        for state in self.states():
            if state.task == task:
                return state
        raise RuleViolation("task-state" if task else "feature-state",
                            f"the board has no {'task' if task else 'feature'} state")

    # -- cards ------------------------------------------------------------------------

    def cards(self) -> list[Card]:
        """The live cards: by state order, then parent, then position."""
        rank = {id: i for i, id in enumerate(self._state_order)}
        return sorted(self._cards.values(),
                      key=lambda c: (rank.get(c.state, -1), c.parent or "", c.position, c.id))

    def card(self, id: object) -> Card:
        card = self._cards.get(id) if isinstance(id, str) else None
        if card is None:
            raise NotFound("card", id)
        return card

    def column(self, state: str, parent: str | None, without: Card | None = None
               ) -> list[Card]:
        """The live cards in ``state`` under ``parent`` (None: the features), in
        position order, but ``without``."""
        return sorted((c for c in self._cards.values()
                       if c.state == state and c.parent == parent and c is not without),
                      key=lambda c: (c.position, c.id))

    def tasks(self, feature_id: str) -> list[Card]:
        """The live tasks of a feature, in position order."""
        return sorted((c for c in self._cards.values() if c.parent == feature_id),
                      key=lambda c: (c.position, c.id))

    def add_card(self, data: dict[str, Any], by: str | None = None,
                 now: float | None = None) -> Result:
        """Create a card from JSON fields: ``title`` (required), ``description``,
        ``size`` (default 1), ``blocked``, ``assignee``, and where: ``parent`` (a
        feature's id for a task), ``state`` (default: the first state of its tier),
        ``position`` (index in its column; default last)."""
        if not isinstance(data, dict):
            raise BadInput("card", "must be an object")
        unknown = set(data) - set(CARD_FIELDS) - {"parent", "state", "position"}
        if unknown:
            raise BadInput(sorted(unknown)[0], "is not a field of a card")
        fields = self._card_fields({"size": 1, **data})
        if "title" not in fields:
            raise BadInput("title", "is required")
        parent = data.get("parent")
        state = data.get("state")
        if state is None:
            state = self._first_state(task=parent is not None).id
        card = Card(uuid.uuid4().hex, fields.pop("title"), state, "", parent=parent)
        for key, value in fields.items():
            setattr(card, key, value)
        result = self._place(card, state, parent, data.get("position"), by, _now(now),
                             "created")
        self._cards[card.id] = card
        return result

    def update_card(self, id: str, changes: dict[str, Any], by: str | None = None) -> Card:
        """Change a card's ``title``, ``description``, ``size``, ``blocked`` (a reason,
        or null when unblocked) or ``assignee``. Checked first: nothing changes when one
        is bad."""
        card = self.card(id)
        if not isinstance(changes, dict):
            raise BadInput("card", "must be an object")
        unknown = set(changes) - set(CARD_FIELDS)
        if unknown:
            raise BadInput(sorted(unknown)[0], "is not a field a card update can change")
        for key, value in self._card_fields(changes).items():
            setattr(card, key, value)
        self._changed("card", id)
        return card

    def _card_fields(self, data: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if "title" in data:
            fields["title"] = text.title(data["title"])
        if "description" in data:
            description = text.optional_text(data["description"], "description")
            fields["description"] = None if description is None else text.clean_html(
                description)
        if "size" in data:
            fields["size"] = text.points(data["size"])
        if "blocked" in data:
            fields["blocked"] = text.optional_text(data["blocked"], "blocked")
        if "assignee" in data:
            assignee = data["assignee"]
            if assignee is not None and (not isinstance(assignee, str) or not assignee):
                raise BadInput("assignee", f"must be a user id or null, not {assignee!r}")
            fields["assignee"] = assignee
        return fields

    def move(self, id: str, state: str, parent: str | None = None,
             position: int | None = None, by: str | None = None,
             now: float | None = None) -> Result:
        """The one move primitive: put card ``id`` in ``state``, under ``parent`` (None:
        a feature), at index ``position`` of that column (None: last).

        Enforces the two-tier rules and hard WIP limits (RuleViolation); over a soft
        limit the move is done and the result carries a warning. A task pulled into a
        working state is assigned to ``by``. A change of state or parent is recorded in
        the card's history at ``now`` (default: the current time).
        """
        card = self.card(id)
        return self._place(card, state, parent, position, by, _now(now), "moved")

    def _place(self, card: Card, state_id: str, parent: str | None, position: Any,
               by: str | None, now: float, event: str) -> Result:
        state = self.state(state_id)
        if parent is not None:
            feature = self.card(parent)
            if feature.parent is not None or feature is card:
                raise RuleViolation("two-levels", "a task's parent must be a feature: "
                                    "there are only two levels")
            if not state.task:
                raise RuleViolation("task-state",
                                    f"a task cannot be in feature state {state.title!r}")
            if card.id in self._cards and self.tasks(card.id):
                raise RuleViolation("feature-with-tasks",
                                    "a feature that has tasks cannot become a task")
        elif state.task:
            raise RuleViolation("feature-state",
                                f"a feature cannot be in task state {state.title!r}")
        _check_position(position)
        entering = event == "created" or card.state != state.id
        warnings = self._check_wip(card, state) if entering else []
        card.position = self._key_at(card, state.id, parent, position)
        moved = entering or card.parent != parent
        card.state = state.id
        card.parent = parent
        if entering and state.working and parent is not None and by is not None:
            card.assignee = by
        if moved:
            card.add_event({"at": now, "event": event, "state": state.id,
                            "working": state.working, "complete": state.complete,
                            "parent": parent, "by": by})
        self._changed("card", card.id)
        return Result(card, warnings)

    def _key_at(self, card: Card, state: str, parent: str | None, position: int | None
                ) -> str:
        column = self.column(state, parent, without=card)
        index = len(column) if position is None else min(position, len(column))
        before = column[index - 1].position if index > 0 else None
        after = column[index].position if index < len(column) else None
        if before is not None and after is not None and before >= after:
            # Two cards placed at once between the same neighbours share a key; going
            # after both keeps the order total.
            after = None
        return key_between(before, after)

    def _check_wip(self, card: Card, state: State) -> list[dict[str, Any]]:
        wip: WipLimit | None = state.wip
        if wip is None:
            return []
        def weight(c: Card) -> int:
            return 1 if wip.unit == "cards" else c.size
        load = sum(weight(c) for c in self._in_state(state.id) if c is not card)
        load += weight(card)
        if wip.hard:
            # Cards are separate objects: two transactions moving two cards into this
            # state at once would each count the other's card where it was. Both write
            # the state, so the second to commit conflicts and, retried, counts again.
            state.admitted = state.admitted + 1
        if load <= wip.limit:
            return []
        message = (f"state {state.title!r} would hold {load} {wip.unit}, over its "
                   f"limit of {wip.limit}")
        if wip.hard:
            raise RuleViolation("wip-limit", message)
        return [{"rule": "wip-limit", "state": state.id, "message": message}]

    def delete_card(self, id: str) -> list[str]:
        """Delete a card for good (a feature with its tasks); the ids deleted."""
        card = self.card(id)
        gone = [card] + (self.tasks(id) if card.parent is None else [])
        for c in gone:
            del self._cards[c.id]
            self._changed("card", c.id)
        return [c.id for c in gone]

    def comment(self, id: str, body: object, by: str | None = None,
                now: float | None = None) -> dict[str, Any]:
        """Add a comment (HTML, sanitised) to a card; the comment."""
        card = self.card(id)
        body = text.optional_text(body, "comment")
        if body is None:
            raise BadInput("comment", "must not be empty")
        comment = {"at": _now(now), "by": by, "body": text.clean_html(body)}
        card.add_comment(comment)
        self._changed("card", id)
        return comment

    def progress(self, feature_id: str) -> dict[str, int]:
        """A feature's progress, ``{"complete": points, "total": points}``, summed over
        its tasks; a task counts as complete in a ``complete`` state."""
        self.card(feature_id)
        complete = total = 0
        for task in self.tasks(feature_id):
            total += task.size
            if self.state(task.state).complete:
                complete += task.size
        return {"complete": complete, "total": total}

    # -- the bag ----------------------------------------------------------------------

    def archive(self, feature_id: str, by: str | None = None,
                now: float | None = None) -> None:
        """Put a feature and its tasks in the bag: off the board, kept whole."""
        feature = self.card(feature_id)
        if feature.parent is not None:
            raise RuleViolation("archive-features", "only features are archived, "
                                "with their tasks; this card is a task")
        at = _now(now)
        bagged = [feature] + self.tasks(feature_id)
        for card in bagged:
            card.add_event({"at": at, "event": "archived", "state": card.state,
                            "working": False, "complete": False, "parent": card.parent,
                            "by": by})
            del self._cards[card.id]
            self._changed("card", card.id)
        self._archive[feature_id] = tuple(bagged)

    def archived(self) -> list[Card]:
        """The features in the bag (their tasks are kept with them)."""
        return [cards[0] for cards in self._archive.values()]

    def bagged(self, feature_id: str) -> tuple[Card, ...]:
        """An archived feature followed by its tasks."""
        bagged = self._archive.get(feature_id) if isinstance(feature_id, str) else None
        if bagged is None:
            raise NotFound("archived feature", feature_id)
        return bagged

    def restore(self, feature_id: str, by: str | None = None,
                now: float | None = None) -> Card:
        """Take a feature and its tasks out of the bag, back where they were (into the
        first state of their tier if theirs was removed meanwhile)."""
        bagged = self.bagged(feature_id)
        at = _now(now)
        del self._archive[feature_id]
        for card in bagged:
            if card.state not in self._states:
                card.state = self._first_state(task=card.parent is not None).id
            state = self._states[card.state]
            card.add_event({"at": at, "event": "restored", "state": card.state,
                            "working": state.working, "complete": state.complete,
                            "parent": card.parent, "by": by})
            self._cards[card.id] = card
            self._changed("card", card.id)
        return bagged[0]

    def __repr__(self) -> str:
        return f"<Board {self.name!r}>"
