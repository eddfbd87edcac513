"""Cards: features (no parent) and their tasks, with comments and history.

A card is its own persistent object, apart from the board, so that two people changing
two different cards never write the same object. Its history is an append-only tuple of
events, each a dict::

    {"at": <seconds since the epoch, UTC>, "event": "created" | "moved" | "archived"
     | "restored", "state": <state id>, "working": bool, "complete": bool,
     "parent": <feature id or None>, "by": <user id or None>}

(``working``/``complete`` are the state's flags at that moment, so metrics stay right
when a state is edited later). Events are replaced, never edited: the tuple is reassigned,
which marks the card changed.
"""
from __future__ import annotations

import datetime
from typing import Any

from persistent import Persistent

__all__ = ["Card", "iso"]


def iso(at: float) -> str:
    """``at`` (seconds since the epoch) as an ISO 8601 UTC time."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat()


class Card(Persistent):
    """A feature (``parent`` None) or a task (``parent`` = its feature's id).

    Change it through :class:`~amphora_kanban.board.Board`, which enforces the rules and
    records the change for live updates.
    """

    def __init__(self, id: str, title: str, state: str, position: str,
                 parent: str | None = None, description: str | None = None,
                 size: int = 1, blocked: str | None = None, assignee: str | None = None):
        self.id = id
        self.title = title
        self.description = description
        self.size = size
        self.parent = parent
        self.state = state
        self.blocked = blocked
        self.assignee = assignee
        self.position = position
        self.history: tuple[dict[str, Any], ...] = ()
        self.comments: tuple[dict[str, Any], ...] = ()

    def add_event(self, event: dict[str, Any]) -> None:
        self.history = self.history + (event,)

    def add_comment(self, comment: dict[str, Any]) -> None:
        self.comments = self.comments + (comment,)

    def to_json(self) -> dict[str, Any]:
        """The card as the board lists it."""
        return {"id": self.id, "title": self.title, "description": self.description,
                "size": self.size, "parent": self.parent, "state": self.state,
                "blocked": self.blocked, "assignee": self.assignee,
                "position": self.position}

    def to_json_full(self) -> dict[str, Any]:
        """The card fetched alone: also its history and comments (times in ISO 8601)."""
        data = self.to_json()
        data["history"] = [{**event, "at": iso(event["at"])} for event in self.history]
        data["comments"] = [{**comment, "at": iso(comment["at"])}
                            for comment in self.comments]
        return data

    def __repr__(self) -> str:
        return f"<Card {self.id!r} {self.title!r}>"
