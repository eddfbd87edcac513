"""Automatic mode: objects of indexed classes that a transaction adds or changes are
(re)indexed when it commits."""
from __future__ import annotations

import datetime

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from amphora.catalog import Catalog, Contains, Eq, InRange, index_on_commit
from catalog_model import Person, Task

DAY = datetime.date(2026, 3, 1)


@pytest.fixture
def auto(db):
    hook = index_on_commit(db)
    yield db
    db.remove_before_commit_hook(hook)


def titles(db, *conditions, **options) -> list[str]:
    with db.transaction() as conn:
        return [task.title for task in Catalog.open(conn).query(*conditions, **options)]


def test_new_objects_reached_from_changed_ones_are_indexed_at_commit(auto):
    with auto.transaction() as conn:
        conn.root.tasks = tasks = OOBTree()
        tasks["a"] = Task("water the plants", due=DAY, tags=("home",))
        # two levels below the changed tree, new as well
        tasks["b"] = PersistentMapping(inner=Task("call the plumber", due=DAY, tags=("home",)))
        conn.root.person = Person("ann")  # a class no index covers: left alone
    assert sorted(titles(auto, Eq("tags", "home"))) == ["call the plumber", "water the plants"]


def test_a_changed_object_is_reindexed_at_commit(auto):
    with auto.transaction() as conn:
        conn.root.task = Task("water the plants", due=DAY, notes="the ferns")
    with auto.transaction() as conn:
        task = conn.root.task
        task.due = DAY + datetime.timedelta(days=2)
        task.notes = "the cactus"
    assert titles(auto, Eq("due", DAY)) == []
    assert titles(auto, InRange("due", DAY, DAY + datetime.timedelta(days=3))) == [
        "water the plants"]
    assert titles(auto, Contains("text", "ferns")) == []
    assert titles(auto, Contains("text", "cactus")) == ["water the plants"]


def test_an_aborted_transaction_indexes_nothing(auto):
    with auto.transaction() as conn:
        conn.root.task = Task("water the plants", due=DAY)
    conn = auto.open()
    conn.root.task.due = None
    conn.root.other = Task("left out", due=DAY)
    conn.transaction_manager.abort()
    conn.close()
    assert titles(auto, Eq("due", DAY)) == ["water the plants"]


def test_an_explicit_transaction_manager_commits_the_reindexing_too(auto):
    manager = transaction.TransactionManager()
    conn = auto.open(transaction_manager=manager)
    conn.root.task = Task("sweep", due=DAY)
    manager.commit()
    conn.root.task.due = None  # no value any more: out of the index
    manager.commit()
    conn.close()
    assert titles(auto, sort="due") == []


def test_without_the_hook_nothing_is_indexed(db):
    with db.transaction() as conn:
        conn.root.task = Task("water the plants", due=DAY)
    assert titles(db, Eq("due", DAY)) == []


def test_a_database_without_a_catalog_commits_as_usual(tmp_path):
    import amphora
    db = amphora.open(f"sqlite:///{tmp_path}/plain.db")
    index_on_commit(db, "missing")
    with db.transaction() as conn:
        conn.root.task = Task("water the plants", due=DAY)
    with db.transaction() as conn:
        assert conn.root.task.due == DAY
    db.close()
