"""ZODB's reusable blob suite through the layers: a DemoStorage (blobs written to a memory
layer, read from it or from the SQLite base under it), and an EncryptedStorage over SQLite
(each blob file sealed in the SQLite blob directory)."""
from __future__ import annotations

import os

import pytest
from zodb_blob_suite import blob_suite_tests, run_blob_suite_test

import amphora
from amphora.crypto.keyring import KdfParameters
from amphora.storage.demo import DemoStorage
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage


def _demo(name: str, blob_dir: str) -> DemoStorage:
    base = SQLiteStorage(f"{name}-base.db", blob_dir=f"{blob_dir}-base")
    return DemoStorage(base, MemoryStorage(name, blob_dir=os.path.abspath(blob_dir)))


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "DemoMemoryOverSQLite", _demo, test_packing=True, test_undo=False, any_oids=True, skip={
        "is_blob_record": "reads the record of oid 1 as the first object stored: a "
        "DemoStorage's new oids start at a random point"}))
def test_demo_memory_over_sqlite(layer, test):
    run_blob_suite_test(layer, test)


CHEAP = KdfParameters(iterations=1, lanes=1, memory_cost=1024)  # keys made in milliseconds


def _encrypted(name: str, blob_dir: str) -> EncryptedStorage:
    path = f"{name}.keyring"
    keyring = (amphora.Keyring.unlock(path, "passphrase") if os.path.exists(path)
               else amphora.Keyring.create(path, "passphrase", CHEAP))
    # the suite's blob directory is the encrypted storage's own (uncommitted files and
    # savepoints, which the suite counts there); the sealed files are SQLite's, beside it
    return EncryptedStorage(SQLiteStorage(f"{name}.db", blob_dir=f"{blob_dir}-sealed"),
                            keyring, seen_file=False, blob_cache_dir=blob_dir)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "EncryptedSQLite", _encrypted, test_packing=True, test_undo=False))
def test_encrypted_sqlite(layer, test):
    run_blob_suite_test(layer, test)
