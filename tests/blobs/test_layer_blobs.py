"""Blobs through the layers with amphora's Connection: a DemoStorage writes blobs to its
changes storage and reads the base's where it has none of its own; a BeforeStorage serves
the base's blobs as they were at its moment, read-only."""
from __future__ import annotations

import os

import pytest

import amphora
from amphora import Blob
from amphora.storage.before import BeforeStorage
from amphora.storage.demo import DemoStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import z64


def read(blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


def write(blob, data: bytes) -> None:
    with blob.open("w") as file:
        file.write(data)


def base_with_a_blob(path) -> bytes:
    """A SQLite file whose root holds a blob (``b"base"``, later ``b"base, again"``) and a
    title; returns the tid of the first revision."""
    db = amphora.DB(SQLiteStorage(str(path)))
    with db.transaction() as conn:
        conn.root.blob = Blob(b"base")
        conn.root.title = "base"
    first = db.last_transaction()
    with db.transaction() as conn:
        write(conn.root.blob, b"base, again")
    db.close()
    return first


def files_under(directory) -> dict[str, bytes]:
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            if name.endswith(".blob"):
                with open(os.path.join(parent, name), "rb") as file:
                    found[os.path.join(parent, name)] = file.read()
    return found


@pytest.mark.parametrize("changes", ["memory", "sqlite"])
def test_a_demo_storage_reads_the_base_blobs_and_writes_its_own(changes, tmp_path):
    base_with_a_blob(tmp_path / "base.db")
    base_files = files_under(tmp_path / "base.db.blobs")
    layer = (MemoryStorage("changes") if changes == "memory"
             else SQLiteStorage(str(tmp_path / "changes.db")))
    db = amphora.DB(DemoStorage(SQLiteStorage(str(tmp_path / "base.db"), read_only=True),
                                layer))
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"base, again"
        write(conn.root.blob, b"changed in the layer")
        conn.root.new = Blob(b"new in the layer")
        blob_oid = conn.root.blob._p_oid
    with db.transaction() as conn:
        assert read(conn.root.blob) == b"changed in the layer"
        assert read(conn.root.new) == b"new in the layer"
    # Each blob revision is read from where it was written: history through both layers
    storage = db.storage
    revisions = [entry["tid"] for entry in storage.history(blob_oid, None)]
    assert len(revisions) == 3
    contents = []
    for tid in revisions:
        with open(storage.loadBlob(blob_oid, tid), "rb") as file:
            contents.append(file.read())
    assert contents == [b"changed in the layer", b"base, again", b"base"]
    db.close()
    assert files_under(tmp_path / "base.db.blobs") == base_files  # the base was not written
    if changes == "sqlite":
        layer_files = files_under(tmp_path / "changes.db.blobs")
        assert sorted(layer_files.values()) == [b"changed in the layer", b"new in the layer"]


def test_a_demo_storage_pack_removes_the_layer_files_of_objects_it_deletes(tmp_path):
    base_with_a_blob(tmp_path / "base.db")
    base_files = files_under(tmp_path / "base.db.blobs")
    layer = SQLiteStorage(str(tmp_path / "changes.db"))
    db = amphora.DB(DemoStorage(SQLiteStorage(str(tmp_path / "base.db"), read_only=True),
                                layer))
    with db.transaction() as conn:
        write(conn.root.blob, b"changed in the layer")
        blob_oid = conn.root.blob._p_oid
    assert list(files_under(tmp_path / "changes.db.blobs").values()) == [
        b"changed in the layer"]
    with db.transaction() as conn:
        del conn.root.blob
    db.pack()
    assert files_under(tmp_path / "changes.db.blobs") == {}
    with pytest.raises(amphora.ObjectNotFoundError):
        db.storage.loadBlob(blob_oid, db.storage.history(z64, 1)[0]["tid"])
    db.close()
    assert files_under(tmp_path / "base.db.blobs") == base_files


def test_a_before_storage_serves_the_blobs_of_its_moment_read_only(tmp_path):
    first = base_with_a_blob(tmp_path / "base.db")
    at_first = amphora.DB(BeforeStorage(SQLiteStorage(str(tmp_path / "base.db")), at=first))
    now = amphora.DB(BeforeStorage(SQLiteStorage(str(tmp_path / "base.db"))))
    try:
        with at_first.transaction() as conn:
            assert read(conn.root.blob) == b"base"
        with now.transaction() as conn:
            assert read(conn.root.blob) == b"base, again"
            blob_oid = conn.root.blob._p_oid
            later = conn.root.blob._p_serial
        with pytest.raises(amphora.ObjectNotFoundError):
            at_first.storage.loadBlob(blob_oid, later)  # after its moment
        conn = now.open()
        write(conn.root.blob, b"refused")
        with pytest.raises(amphora.ReadOnlyError):
            conn.transaction_manager.commit()
        conn.transaction_manager.abort()
        conn.close()
    finally:
        at_first.close()
        now.close()
