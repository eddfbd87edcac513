"""``amphora copy`` with blobs: a FileStorage with a blob directory (made by ZODB here)
copied into each amphora storage that keeps blobs (SQLite and PostgreSQL by the command,
memory in the process) and back, record for record and blob
byte for byte; and a clear refusal where the destination keeps no blobs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pgserver
import pytest
import transaction
import ZODB
from ZODB.blob import Blob
from ZODB.FileStorage import FileStorage

import amphora
from amphora.copy import copy_transactions
from amphora.storage.blobs import is_blob_record
from amphora.storage.memory import MemoryStorage


def amphora_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "amphora", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def make_filestorage(directory: Path) -> None:
    """Data.fs and its blob directory, written by ZODB: blobs of 0, 1 and 100,000 bytes,
    one replaced, several in one transaction, beside plain objects."""
    db = ZODB.DB(FileStorage(str(directory / "Data.fs"), blob_dir=str(directory / "blobs")))
    conn = db.open()
    conn.root.empty, conn.root.one = Blob(b""), Blob(b"1")
    conn.root.title = "blobs"
    transaction.commit()
    conn.root.big = Blob(bytes(range(250)) * 400)
    conn.root.many = [Blob(b"blob %d" % i) for i in range(20)]
    transaction.commit()
    with conn.root.one.open("w") as file:
        file.write(b"one, again")
    transaction.commit()
    db.close()


def records_and_blobs(storage) -> list[tuple]:
    """Every transaction's tid and metadata, every record, and each blob's bytes."""
    found = []
    for txn in storage.iterator():
        records = []
        for record in txn:
            blob = None
            if is_blob_record(record.data):
                with open(storage.loadBlob(record.oid, txn.tid), "rb") as file:
                    blob = file.read()
            records.append((record.oid, record.data, blob))
        found.append((txn.tid, txn.user, txn.description, sorted(records)))
    return found


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_filestorage_with_blobs_copies_into_an_amphora_storage_and_back(tmp_path, kind):
    make_filestorage(tmp_path)
    uri = (f"sqlite:///{tmp_path / 'app.db'}" if kind == "sqlite"
           else pgserver.schema_uri(str(tmp_path / "app")))
    amphora_command("copy", "file://Data.fs?blobstorage_dir=blobs", uri, cwd=tmp_path)
    amphora_command("copy", uri, "file://Back.fs?blobstorage_dir=back-blobs", cwd=tmp_path)
    original = FileStorage(str(tmp_path / "Data.fs"), read_only=True,
                           blob_dir=str(tmp_path / "blobs"))
    copied = amphora.open_storage(uri, read_only=True)
    back = FileStorage(str(tmp_path / "Back.fs"), read_only=True,
                       blob_dir=str(tmp_path / "back-blobs"))
    try:
        expected = records_and_blobs(original)
        assert sum(blob is not None for *_, records in expected
                   for *_, blob in records) == 2 + 21 + 1
        assert records_and_blobs(copied) == expected
        assert records_and_blobs(back) == expected
    finally:
        for storage in (original, copied, back):
            storage.close()
    db = amphora.open(uri)
    with db.transaction() as conn:
        with conn.root.one.open() as file:
            assert file.read() == b"one, again"
    db.close()


def test_a_filestorage_with_blobs_copies_into_memory_and_back(tmp_path):
    make_filestorage(tmp_path)
    original = FileStorage(str(tmp_path / "Data.fs"), read_only=True,
                           blob_dir=str(tmp_path / "blobs"))
    memory = MemoryStorage()
    back = FileStorage(str(tmp_path / "Back.fs"), blob_dir=str(tmp_path / "back-blobs"))
    try:
        copy_transactions(original, memory)
        copy_transactions(memory, back)
        expected = records_and_blobs(original)
        assert records_and_blobs(memory) == expected
        assert records_and_blobs(back) == expected
    finally:
        for storage in (original, memory, back):
            storage.close()


def test_a_destination_without_blobs_refuses_them_naming_itself(tmp_path):
    make_filestorage(tmp_path)
    original = FileStorage(str(tmp_path / "Data.fs"), read_only=True,
                           blob_dir=str(tmp_path / "blobs"))
    destination = FileStorage(str(tmp_path / "Plain.fs"))  # without a blob directory
    try:
        with pytest.raises(amphora.Unsupported, match="Plain.fs") as caught:
            copy_transactions(original, destination)
        assert "blob" in str(caught.value)
        # The transactions before the first with a blob are copied, that one is not
        first = next(iter(original.iterator())).tid  # ZODB's creation of the root
        assert destination.lastTransaction() == first
    finally:
        original.close()
        destination.close()
