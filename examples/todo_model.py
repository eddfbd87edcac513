"""The to-do example's persistent classes.

They live in their own module, not in the script: a record names its class by module and
name, so a class defined in ``__main__`` could not be loaded by any other program.
"""
from __future__ import annotations

import datetime

from BTrees.IOBTree import IOBTree
from persistent import Persistent


class Task(Persistent):
    """One thing to do. Assigning an attribute marks the task changed; the next commit
    stores it."""

    def __init__(self, number: int, title: str):
        self.number = number
        self.title = title
        self.done = False
        self.created = datetime.datetime.now(datetime.timezone.utc)

    def __repr__(self) -> str:
        return f"<Task {self.number} {self.title!r}{' done' if self.done else ''}>"


class TodoList(Persistent):
    """Tasks by number, in a BTree: each bucket is its own record, so a list of any
    length loads and commits only the parts that are used."""

    def __init__(self):
        self.tasks = IOBTree()
        self.next_number = 1

    def add(self, title: str) -> Task:
        task = Task(self.next_number, title)
        self.tasks[task.number] = task
        self.next_number += 1
        return task

    def find(self, title: str) -> Task | None:
        for task in self.tasks.values():
            if task.title == title:
                return task
        return None
