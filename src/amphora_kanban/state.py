"""Board states (columns) as data: flags, and an optional work-in-progress limit.

A state is either a *feature state* (``task`` false: a column of the board, holding
features) or a *task state* (``task`` true: a column of the task board shown inside a
feature). Flags: ``explode`` (features here show their task board), ``working`` (cards
here are being worked on: pulling a task in assigns the mover), ``complete`` (tasks here
count as done in the feature's progress; cards reaching it end their cycle time).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from persistent import Persistent

from amphora_kanban import text
from amphora_kanban.errors import BadInput

__all__ = ["State", "WipLimit", "DEFAULT_STATES", "FLAGS", "slug"]

FLAGS = ("task", "explode", "working", "complete")
WIP_UNITS = ("cards", "points")

# Like the original two-tier board: the feature flow, with a task board inside
# Development.
DEFAULT_STATES: tuple[dict[str, Any], ...] = (
    {"title": "Backlog"},
    {"title": "Ready"},
    {"title": "Development", "explode": True, "working": True},
    {"id": "ready-task", "title": "Ready", "task": True},
    {"title": "Doing", "task": True, "working": True},
    {"title": "Needs review", "task": True},
    {"title": "Review", "task": True, "working": True},
    {"title": "Done", "task": True, "complete": True},
    {"title": "Acceptance", "working": True},
    {"title": "Deploying", "working": True},
    {"title": "Deployed", "complete": True},
)


def slug(title: str) -> str:
    """An id made from a title: lower case, words joined by ``-`` (``"state"`` if empty)."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "state"


@dataclass(frozen=True)
class WipLimit:
    """At most ``limit`` cards (``unit="cards"``) or points (``"points"``) in a state;
    over it a move warns, or is refused when ``hard``."""

    limit: int
    unit: str = "cards"
    hard: bool = False

    @classmethod
    def parse(cls, value: object) -> WipLimit | None:
        """A limit from its JSON form ``{limit, unit, hard}`` (None: no limit)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadInput("wip", "must be null or an object {limit, unit, hard}")
        unknown = set(value) - {"limit", "unit", "hard"}
        if unknown:
            raise BadInput("wip", f"unknown keys {sorted(unknown)}")
        limit = value.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadInput("wip.limit", f"must be a positive integer, not {limit!r}")
        unit = value.get("unit", "cards")
        if unit not in WIP_UNITS:
            raise BadInput("wip.unit", f"must be one of {list(WIP_UNITS)}, not {unit!r}")
        hard = value.get("hard", False)
        if not isinstance(hard, bool):
            raise BadInput("wip.hard", f"must be true or false, not {hard!r}")
        return cls(limit, unit, hard)

    def to_json(self) -> dict[str, Any]:
        return {"limit": self.limit, "unit": self.unit, "hard": self.hard}


class State(Persistent):
    """One column of a board. Change it through :class:`~amphora_kanban.board.Board`
    (which records the change for live updates), not directly.

    ``admitted`` counts the cards that entered the state while it had a hard WIP limit:
    each entry writes the state, so that two entered at once conflict (see
    :meth:`~amphora_kanban.board.Board.move`)."""

    admitted = 0

    def __init__(self, id: str, title: str, task: bool = False, explode: bool = False,
                 working: bool = False, complete: bool = False, wip: WipLimit | None = None):
        self.id = id
        self.title = title
        self.task = task
        self.explode = explode
        self.working = working
        self.complete = complete
        self.wip = wip

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the JSON fields in ``changes`` (title, flags, wip), checked first:
        nothing is changed when one is bad."""
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "title":
                checked[key] = text.title(value)
            elif key in FLAGS:
                if not isinstance(value, bool):
                    raise BadInput(key, f"must be true or false, not {value!r}")
                checked[key] = value
            elif key == "wip":
                checked[key] = WipLimit.parse(value)
            else:
                raise BadInput(key, "is not a field of a state")
        for key, value in checked.items():
            setattr(self, key, value)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "task": self.task,
                "explode": self.explode, "working": self.working,
                "complete": self.complete,
                "wip": None if self.wip is None else self.wip.to_json()}

    def __repr__(self) -> str:
        return f"<State {self.id!r}>"
