"""Undo on every history-preserving storage, as ZODB's FileStorage does it.

``db.undoLog()`` lists transactions newest first; ``db.undo(id)`` joins the current
transaction, and its commit is a new transaction that gives the objects the undone
transaction wrote the revisions they had before it. An object the undone transaction
created is gone afterwards; undoing the undo brings it back. A later change to one of
the objects is merged as a conflict would be (``_p_resolveConflict``), else
:class:`amphora.UndoError`. Storages that keep no history refuse with ``Unsupported``.
"""
from __future__ import annotations

import pytest
import transaction
import ZODB
import ZODB.POSException
from BTrees.Length import Length

import amphora
from amphora.utils import maxtid

from conformance.models import Item

pytestmark = pytest.mark.timeout(60)


def _undo(db, entry_or_id) -> None:
    transaction_id = entry_or_id["id"] if isinstance(entry_or_id, dict) else entry_or_id
    db.undo(transaction_id)
    transaction.commit()


def test_undo_gives_objects_their_previous_revision(make_storage, db):
    make_storage.require("undo")
    with db.transaction("create") as conn:
        conn.root.item = Item(1)
    with db.transaction("change") as conn:
        conn.root.item.value = 2
    log = db.undoLog()
    assert [entry["description"] for entry in log[:2]] == ["change", "create"]
    _undo(db, log[0])
    with db.transaction() as conn:
        assert conn.root.item.value == 1
    assert db.undoLog()[0]["description"] == ""  # the undo is a transaction of its own


def test_undoing_a_creation_removes_the_object_and_undoing_that_restores_it(make_storage, db):
    make_storage.require("undo")
    with db.transaction("add") as conn:
        conn.root.item = Item("new")
    oid = conn.root.item._p_oid
    _undo(db, db.undoLog()[0])
    with db.transaction() as conn:
        assert "item" not in conn.root()
    with pytest.raises(amphora.ObjectNotFoundError):
        db.storage.loadBefore(oid, maxtid)
    _undo(db, db.undoLog()[0])  # the undo of the undo
    with db.transaction() as conn:
        assert conn.root.item.value == "new"


def test_a_later_unmergeable_change_makes_the_undo_fail(make_storage, db):
    make_storage.require("undo")
    with db.transaction() as conn:
        conn.root.item = Item(1)
    with db.transaction("to undo") as conn:
        conn.root.item.value = 2
    undone = db.undoLog()[0]
    with db.transaction("later") as conn:
        conn.root.item.value = 3
    db.undo(undone["id"])
    with pytest.raises(amphora.UndoError) as raised:
        transaction.commit()
    transaction.abort()
    assert isinstance(raised.value, ZODB.POSException.UndoError)
    assert raised.value.oid == conn.root.item._p_oid
    with db.transaction() as conn:
        assert conn.root.item.value == 3  # nothing written


def test_a_later_mergeable_change_is_merged(make_storage, db):
    make_storage.require("undo")
    with db.transaction() as conn:
        conn.root.length = Length(10)
    with db.transaction("add 5") as conn:
        conn.root.length.change(5)
    undone = db.undoLog()[0]
    with db.transaction("add 100") as conn:
        conn.root.length.change(100)
    _undo(db, undone)
    with db.transaction() as conn:
        assert conn.root.length() == 110


def test_an_undo_invalidates_other_connections(make_storage, db):
    make_storage.require("undo")
    with db.transaction() as conn:
        conn.root.item = Item(1)
    with db.transaction() as conn:
        conn.root.item.value = 2
    manager = transaction.TransactionManager()
    other = db.open(transaction_manager=manager)
    assert other.root.item.value == 2
    manager.commit()
    _undo(db, db.undoLog()[0])
    manager.begin()
    assert other.root.item.value == 1
    other.close()


def test_an_undo_reaches_another_storage_on_the_same_data(make_storage, storage, db):
    make_storage.require("undo")
    if not make_storage.durable and not make_storage.supports("remote"):
        pytest.skip(f"{make_storage.name} storage: its data is in one storage object only")
    with db.transaction() as conn:
        conn.root.item = Item(1)
    with db.transaction() as conn:
        conn.root.item.value = 2
    second = amphora.DB(make_storage())
    with second.transaction() as conn:
        assert conn.root.item.value == 2
    _undo(db, db.undoLog()[0])
    with second.transaction() as conn:
        assert conn.root.item.value == 1
    second.close()


def test_undo_log_and_info_select_entries(make_storage, db):
    make_storage.require("undo")
    for name in ("a", "b", "c"):
        with db.transaction(name) as conn:
            conn.root()[name] = 1
    assert [e["description"] for e in db.undoLog(0, 2)] == ["c", "b"]
    assert [e["description"] for e in db.undoLog(1, -2)] == ["b", "a"]
    assert [e["description"] for e in db.undoLog(0, 10, lambda e: e["description"] != b"b")
            ][:2] == ["c", "a"]
    assert [e["description"] for e in db.undoInfo(0, 10, {"description": "a"})] == ["a"]


def test_undo_through_zodb_db(make_storage, storage, db):
    make_storage.require("undo")
    with db.transaction("create") as conn:
        conn.root.item = Item(1)
        conn.root.other = Item("x")
    with db.transaction("first") as conn:
        conn.root.item.value = 2
    with db.transaction("second") as conn:
        conn.root.other.value = "y"
    if make_storage.durable:
        db.close()
    # a served memory storage lives while a client has it open: a second client, then
    zodb_storage = make_storage() if make_storage.durable or make_storage.supports(
        "remote") else storage
    zdb = ZODB.DB(zodb_storage)
    try:
        assert zdb.supportsUndo()
        info = zdb.undoInfo()
        assert [e["description"] for e in info[:2]] == ["second", "first"]
        zdb.undoMultiple([info[0]["id"], info[1]["id"]])
        transaction.commit()
        with zdb.transaction() as conn:
            assert (conn.root()["item"].value, conn.root()["other"].value) == (1, "x")
    finally:
        zdb.close()


def test_storages_without_history_refuse(make_storage, db):
    if make_storage.supports("undo"):
        pytest.skip(f"{make_storage.name} storage: supports undo")
    assert db.undoLog() == [] and not db.supportsUndo()
    with pytest.raises(amphora.Unsupported):
        db.undo(b"\0" * 8)

