"""Persistent classes used by the conformance suite.

They live at module level in an importable module (``conformance.models``) because
stored records name their class by module and name, and loading an object imports it.
"""
from __future__ import annotations

from typing import Any

from persistent import Persistent


class Item(Persistent):
    """A plain persistent object: concurrent changes to it conflict."""

    def __init__(self, value: Any = None, **attributes: Any):
        self.value = value
        for name, attribute in attributes.items():
            setattr(self, name, attribute)

    def __repr__(self) -> str:
        return f"<Item {self.__dict__.get('value', '?')!r}>"


class Counter(Persistent):
    """A counter whose concurrent increments merge: the committed value plus this
    transaction's increment."""

    def __init__(self, value: int = 0):
        self.value = value

    def increment(self, by: int = 1) -> None:
        self.value += by

    def _p_resolveConflict(self, old: dict, committed: dict, new: dict) -> dict:
        merged = dict(committed)
        merged["value"] = committed["value"] + new["value"] - old["value"]
        return merged


class Node(Persistent):
    """A linked-list node, for storing by reachability."""

    def __init__(self, name: str, next: "Node | None" = None):
        self.name = name
        self.next = next
