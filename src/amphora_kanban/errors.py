"""Domain errors of the Kanban model.

The HTTP layer maps them to statuses in one place; the model never speaks HTTP::

    KanbanError             the root: anything the model refuses
     +-- NotFound           a board, state, card or user that does not exist (404)
     +-- BadInput           a value that is malformed; ``field`` names it (400)
     +-- RuleViolation      a well-formed request the rules forbid; ``rule`` names
                            the rule (409): the two-tier rules, a hard WIP limit,
                            removing a state that still holds cards
"""
from __future__ import annotations

__all__ = ["KanbanError", "NotFound", "BadInput", "RuleViolation"]


class KanbanError(Exception):
    """The root of the model's errors. ``str(error)`` is a message fit for a user."""


class NotFound(KanbanError):
    """No ``kind`` (``"card"``, ``"state"``, ``"board"``, ``"user"``) has the id ``key``."""

    def __init__(self, kind: str, key: object):
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} {key!r}")


class BadInput(KanbanError):
    """The value given for ``field`` is malformed; the message says how."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class RuleViolation(KanbanError):
    """The request breaks the rule named ``rule`` (a short stable name, such as
    ``"two-levels"`` or ``"wip-limit"``); the message explains it."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(f"{message} (rule: {rule})")
