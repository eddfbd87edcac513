"""A counter whose conflicts only its class can merge.

``BTrees.Length.Length`` conflicts are merged by the server itself (see
:mod:`amphora.symbolic`); :class:`Tally` has the same interface, and its state is a dict
the server cannot merge, so its conflicts go to the committing client (RESOLVE).
"""
from __future__ import annotations

from persistent import Persistent


class Tally(Persistent):
    def __init__(self, value: int = 0):
        self.value = value

    def change(self, delta: int) -> None:
        self.value += delta

    def __call__(self) -> int:
        return self.value

    def _p_resolveConflict(self, old: dict, committed: dict, new: dict) -> dict:
        return {"value": committed["value"] + new["value"] - old["value"]}
