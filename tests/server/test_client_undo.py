"""Undo through the client storage: ``undoLog``/``undoInfo``/``undo`` of ``ZODB.DB`` and
``amphora undo``/``amphora history`` on ``amphora://`` URIs, the other clients told of
what an undo changed; a served history-free file refuses (``supports_undo`` false)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping

import amphora
from amphora.errors import Unsupported
from amphora.storage.client import ClientStorage
from amphora.storage.undo import undo_tid


def _amphora(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "amphora", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_undo_through_zodb_db_reaches_another_client(servers, tmp_path):
    server = servers(f"sqlite:///{tmp_path}/served.db")
    db = ZODB.DB(ClientStorage(server.host, server.port))
    other = ZODB.DB(ClientStorage(server.host, server.port))
    assert db.storage.supports_undo and db.supportsUndo()
    with db.transaction("first") as conn:
        conn.root()["doc"] = PersistentMapping(v=1)
    with db.transaction("second") as conn:
        conn.root()["doc"]["v"] = 2
    manager = transaction.TransactionManager()
    watcher = other.open(manager)  # holds the object loaded: it must hear of the undo
    manager.begin()
    assert watcher.root()["doc"]["v"] == 2
    entries = db.undoLog(0, 10)
    assert [entry["description"] for entry in entries[:2]] == ["second", "first"]
    assert [entry["id"] for entry in db.undoInfo(0, 10, {"description": b"second"})] == \
        [entries[0]["id"]]
    assert [entry["id"] for entry in db.undoLog(
        0, 10, lambda entry: entry["description"] == b"first")] == [entries[1]["id"]]
    db.undo(entries[0]["id"])
    transaction.commit()
    with db.transaction() as conn:
        assert conn.root()["doc"]["v"] == 1
    manager.begin()
    assert watcher.root()["doc"]["v"] == 1
    manager.abort()
    watcher.close()
    other.close()
    db.close()


def test_undo_multiple_with_a_later_change_merged_by_the_class(servers, tmp_path):
    from BTrees.Length import Length
    server = servers(f"sqlite:///{tmp_path}/served.db")
    db = ZODB.DB(ClientStorage(server.host, server.port))
    with db.transaction() as conn:
        conn.root()["n"] = Length(0)
    for _ in range(3):
        with db.transaction() as conn:
            conn.root()["n"].change(1)
    ids = [entry["id"] for entry in db.undoLog(1, 3)]  # the second and third increments
    db.undoMultiple(ids)
    transaction.commit()
    with db.transaction() as conn:
        assert conn.root()["n"]() == 1
    db.close()


def test_amphora_undo_and_history_on_an_amphora_uri(servers, tmp_path):
    server = servers(f"sqlite:///{tmp_path}/served.db")
    uri = f"amphora://{server.address}"
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.value = "kept"
    with db.transaction() as conn:
        conn.root.value = "mistake"
    last = "0x" + db.storage.lastTransaction().hex()
    listed = _amphora("history", uri)
    assert listed.splitlines()[1].startswith(last)  # the newest undoable transaction
    out = _amphora("undo", uri, last)
    assert out.startswith(f"undid {last}")
    with db.transaction() as conn:
        assert conn.root.value == "kept"
    assert undo_tid(db.storage.undoLog(0, 1)[0]["id"]).hex() > last[2:]  # the undo
    db.close()


def test_a_served_history_free_file_refuses_undo(servers, tmp_path):
    server = servers(f"sqlite:///{tmp_path}/served.db?keep_history=false")
    client = ClientStorage(server.host, server.port)
    assert not client.supports_undo and not client.supportsUndo()
    assert client.undoLog() == []
    db = ZODB.DB(client)
    with db.transaction() as conn:
        conn.root()["x"] = 1
    txn = transaction.TransactionManager().begin()
    client.tpc_begin(txn)
    with pytest.raises(Unsupported, match="cannot undo"):
        client.undo(client.lastTransaction(), txn)
    client.tpc_abort(txn)
    db.close()
