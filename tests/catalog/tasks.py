"""The persistent classes the catalog tests index (importable, so that they pickle)."""
from __future__ import annotations

import datetime

from persistent import Persistent


class Task(Persistent):
    def __init__(self, title: str, due: datetime.date | None = None,
                 tags: tuple[str, ...] = (), notes: str = "", points: int | None = None):
        self.title = title
        self.due = due
        self.tags = tags
        self.notes = notes
        self.points = points

    def text(self) -> str:
        return f"{self.title} {self.notes}"

    def __repr__(self) -> str:
        return f"<Task {self.title!r}>"


class Person(Persistent):
    def __init__(self, name: str):
        self.name = name
