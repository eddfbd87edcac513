"""Blobs copied between every pair of amphora storages that keep them (memory, SQLite,
history-free SQLite, a DemoStorage, an encrypted SQLite file): a FileStorage with a blob directory, written by ZODB,
is copied into the first, from it into the second and from there into a new FileStorage;
every record and every blob's bytes come through (``amphora.copy``, and
``copyTransactionsFrom`` for the second copy) (a history-free storage keeps the
current revisions only, and passes on those)."""
from __future__ import annotations

from pathlib import Path

import pytest
from ZODB.FileStorage import FileStorage

from amphora.copy import copy_transactions
from amphora.crypto.keyring import KdfParameters, Keyring
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.demo import DemoStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage

from restore_support import (blob_count, dump_file_with_blobs, dump_with_blobs,
                             write_blob_filestorage)

KINDS = ["memory", "sqlite", "sqlite-history-free", "demo", "encrypted-sqlite"]
CHEAP = KdfParameters(iterations=1, lanes=1, memory_cost=1024)  # keys made in milliseconds


def _storage(kind: str, path: Path):
    if kind == "encrypted-sqlite":
        keyring = Keyring.create(f"{path}.keyring", "passphrase", CHEAP)
        return EncryptedStorage(SQLiteStorage(str(path)), keyring, seen_file=False)
    if kind == "memory":
        return MemoryStorage(kind)
    if kind == "sqlite":
        return SQLiteStorage(str(path))
    if kind == "sqlite-history-free":
        return SQLiteStorage(str(path), keep_history=False)
    return DemoStorage(MemoryStorage("base"), MemoryStorage("changes"))


def _current_only(history: list[tuple]) -> list[tuple]:
    newest = {oid: tid for tid, *_, records in history for oid, _, _ in records}
    return [(tid, user, description, extension,
             [record for record in records if newest[record[0]] == tid])
            for tid, user, description, extension, records in history]


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, Path, list[tuple]]:
    directory = tmp_path_factory.mktemp("original")
    path, blobs = directory / "Data.fs", directory / "blobs"
    write_blob_filestorage(path, blobs, commits=3)
    history = dump_file_with_blobs(path, blobs)
    assert blob_count(history) == 11
    return path, blobs, history


@pytest.mark.parametrize("first", KINDS)
@pytest.mark.parametrize("second", KINDS)
def test_blobs_copy_between_every_pair_of_storages(first, second, original, tmp_path):
    path, blobs, history = original
    source = FileStorage(str(path), read_only=True, blob_dir=str(blobs))
    one, two = _storage(first, tmp_path / "one.db"), _storage(second, tmp_path / "two.db")
    back = FileStorage(str(tmp_path / "Back.fs"), blob_dir=str(tmp_path / "back-blobs"))
    try:
        copy_transactions(source, one)
        two.copyTransactionsFrom(one)  # (ZODB's name for it: zodbconvert calls it)
        copy_transactions(two, back)
        expected = history
        if "history-free" in first:
            expected = _current_only(expected)
        assert dump_with_blobs(one) == expected
        if "history-free" in second:
            expected = _current_only(expected)
        assert dump_with_blobs(two) == expected
        assert dump_with_blobs(back) == expected
    finally:
        for storage in (source, one, two, back):
            storage.close()
