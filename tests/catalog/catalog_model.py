"""The persistent classes the catalog tests index (importable, so that they pickle), the
indexes the tests declare over them, and a keyring for their encrypted databases."""
from __future__ import annotations

import datetime
from pathlib import Path

from persistent import Persistent

import amphora
from amphora.catalog import Catalog
from amphora.crypto.keyring import KdfParameters


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


def declare(catalog: Catalog) -> None:
    """The indexes the tests query."""
    catalog.add_field("due", class_=Task, attribute="due")
    catalog.add_field("points", class_=Task, attribute="points")
    catalog.add_keyword("tags", class_=Task, attribute="tags")
    catalog.add_text("text", class_=Task, attribute="text")


def cheap_keyring(path: Path) -> amphora.Keyring:
    """A keyring for an encrypted test database, with Argon2id at its cheapest (the data
    keys are random either way)."""
    return amphora.Keyring.create(path, "passphrase", KdfParameters(1, 1, 1024))
