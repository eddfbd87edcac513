"""The blob directory of the storages that keep blobs, at the storage level: where the
files are, what opening checks, what an aborted commit and pack leave, files taken from
another file system, and what ``amphora info`` says."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from ZODB.blob import Blob

import amphora
from amphora.serialize import ObjectWriter
from amphora.storage.base import TransactionMetaData
from amphora.storage.blobs import MARKER, is_blob_record
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import p64, z64


def blob_record() -> bytes:
    return ObjectWriter(None, lambda: None, lambda obj: None).serialize(Blob())


def store_blob(storage, oid: bytes, serial: bytes, path: str) -> bytes:
    """Commit ``path`` as the blob of ``oid``; returns the tid."""
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    storage.storeBlob(oid, serial, blob_record(), path, "", meta)
    storage.tpc_vote(meta)
    return storage.tpc_finish(meta)


def write(path, data: bytes) -> str:
    with open(path, "wb") as file:
        file.write(data)
    return str(path)


def test_blob_records_are_recognised_from_their_opcodes():
    assert is_blob_record(blob_record())
    assert not is_blob_record(ObjectWriter(None, lambda: None, lambda obj: None).serialize(
        amphora.Broken()))
    assert not is_blob_record(b"not a pickle ZODB.blob")
    assert not is_blob_record(None)


def test_the_blob_directory_is_made_beside_the_file_with_it(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "app.db"))
    try:
        assert storage.blob_directory == str(tmp_path / "app.db.blobs")
        assert sorted(os.listdir(storage.blob_directory)) == [MARKER, "pending", "tmp"]
        tid = store_blob(storage, p64(1), z64, write(tmp_path / "data", b"bytes"))
        path = storage.loadBlob(p64(1), tid)
        assert path == os.path.join(storage.blob_directory, "0000000000000001",
                                    tid.hex() + ".blob")
        assert not os.path.exists(tmp_path / "data")  # taken, not copied
    finally:
        storage.close()


def test_a_blob_directory_of_another_program_is_refused_at_open(tmp_path):
    foreign = tmp_path / "app.db.blobs"
    foreign.mkdir()
    (foreign / ".layout").write_text("bushy")  # ZODB's own blob directory
    with pytest.raises(amphora.StorageFormatError, match="not an amphora blob directory"):
        SQLiteStorage(str(tmp_path / "app.db"))
    (tmp_path / "file.blobs").write_text("a file")
    with pytest.raises(amphora.StorageFormatError, match="not a directory"):
        SQLiteStorage(str(tmp_path / "other.db"), blob_dir=str(tmp_path / "file.blobs"))


def test_an_aborted_commit_leaves_no_file(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "app.db"))
    try:
        meta = TransactionMetaData()
        storage.tpc_begin(meta)
        storage.storeBlob(p64(1), z64, blob_record(), write(tmp_path / "data", b"x"), "", meta)
        storage.tpc_vote(meta)  # placed where a commit keeps it ...
        storage.tpc_abort(meta)  # ... and removed
        found = [names for _, _, names in os.walk(storage.blob_directory) if names]
        assert found == [[MARKER]]
    finally:
        storage.close()


def test_pack_removes_files_no_record_refers_to(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "app.db"))
    try:
        tid = store_blob(storage, p64(1), z64, write(tmp_path / "data", b"kept"))
        stray = os.path.join(storage.blob_directory, "0000000000000002", tid.hex() + ".blob")
        os.makedirs(os.path.dirname(stray))
        write(stray, b"no record refers to it")
        storage.pack(tid, gc=False)
        assert not os.path.exists(os.path.dirname(stray))
        with open(storage.loadBlob(p64(1), tid), "rb") as file:
            assert file.read() == b"kept"
    finally:
        storage.close()


def test_a_file_on_another_file_system_is_copied_in(tmp_path):
    other = "/dev/shm"
    if not os.path.isdir(other) or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to take a blob file from")
    source = tempfile.NamedTemporaryFile(dir=other, delete=False)
    source.write(b"from another file system")
    source.close()
    storage = SQLiteStorage(str(tmp_path / "app.db"))
    try:
        tid = store_blob(storage, p64(1), z64, source.name)
        with open(storage.loadBlob(p64(1), tid), "rb") as file:
            assert file.read() == b"from another file system"
        assert not os.path.exists(source.name)
    finally:
        storage.close()


def test_amphora_info_names_the_blob_directory(tmp_path):
    SQLiteStorage(str(tmp_path / "app.db")).close()
    done = subprocess.run([sys.executable, "-m", "amphora", "info", "sqlite:///app.db"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert rows["blob directory"].strip() == "app.db.blobs"  # relative to the working one
