"""The board's generation and the log that answers "what changed since generation N".

Every change to a board bumps its generation and appends ``(generation, kind, id)`` to
the log, ``kind`` being ``"card"`` or ``"state"``. A client that saw generation N asks
for the ids touched after N and gets their current values (or learns they are gone);
one too old for the log gets the whole board.

Writes stay small and concurrent writers rarely conflict:

- the newest entries live in :class:`ChangeLog` itself (at most ``HEAD_SIZE``, a few
  hundred bytes); when it is full they move, in one write, to a page in an ``LOBTree``
  of older pages, and the oldest page is dropped once ``KEEP`` entries are retained;
- two transactions that both appended (moving two different cards) are merged by
  :meth:`ChangeLog._p_resolveConflict`: the later commit's entries are renumbered to
  follow the earlier commit's, so generations follow commit order and a client that saw
  the earlier commit's generation still gets the later commit's changes. A transaction
  that moved entries to a page while another appended is not merged (a conflict error,
  retried by the usual transaction loop); that happens once per ``HEAD_SIZE`` changes.

A generation read inside a transaction is final only once that transaction committed
without a merge: read it (and deltas) after the commit, from a fresh transaction.
"""
from __future__ import annotations

from typing import Iterator

from BTrees.LOBTree import LOBTree
from persistent import Persistent

__all__ = ["ChangeLog", "HEAD_SIZE", "KEEP"]

HEAD_SIZE = 32
KEEP = 320

Entry = tuple  # (generation: int, kind: str, id: str)


class ChangeLog(Persistent):
    """A board's generation counter and its recent changes."""

    def __init__(self) -> None:
        self.generation = 0
        self.head: tuple[Entry, ...] = ()
        # Clients at a generation below ``floor`` are too old: entries after it are kept.
        self.floor = 0
        self.flushes = 0
        self.pages = LOBTree()  # first generation of the page -> tuple of entries

    def record(self, kind: str, id: str) -> int:
        """Append a change of ``kind`` ``id``; the new generation."""
        if len(self.head) >= HEAD_SIZE:
            self._flush()
        self.generation += 1
        self.head = self.head + ((self.generation, kind, id),)
        return self.generation

    def _flush(self) -> None:
        self.pages[self.head[0][0]] = self.head
        self.head = ()
        self.flushes += 1
        while len(self.pages) * HEAD_SIZE > KEEP:
            oldest = self.pages.minKey()
            self.floor = self.pages[oldest][-1][0]
            del self.pages[oldest]

    def since(self, generation: int) -> list[Entry] | None:
        """The entries after ``generation``, oldest first; None when it is too old
        (the log no longer reaches back to it) or from the future."""
        if generation < self.floor or generation > self.generation:
            return None
        entries: list[Entry] = []
        for page in self.pages.values(self._page_from(generation)):
            entries.extend(e for e in page if e[0] > generation)
        entries.extend(e for e in self.head if e[0] > generation)
        return entries

    def _page_from(self, generation: int) -> int:
        # The page holding generation+1 starts at or before it.
        try:
            return self.pages.maxKey(generation + 1)
        except ValueError:  # no page starts that early
            return 0

    def __iter__(self) -> Iterator[Entry]:
        for page in self.pages.values():
            yield from page
        yield from self.head

    def _p_resolveConflict(self, old: dict, committed: dict, new: dict) -> dict:
        """Merge two transactions that appended (see the module docstring)."""
        added = [entry for entry in new["head"] if entry[0] > old["generation"]]
        if not added or new["head"][:len(new["head"]) - len(added)] != old["head"]:
            # E.g. it moved the head to a page: only pure appends are merged.
            raise ValueError("this transaction changed the log other than by appending")
        generation = committed["generation"]
        renumbered = tuple((generation + i, kind, id)
                           for i, (_, kind, id) in enumerate(added, start=1))
        merged = dict(committed)
        merged["head"] = committed["head"] + renumbered
        merged["generation"] = generation + len(added)
        return merged
