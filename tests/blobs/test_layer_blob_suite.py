"""ZODB's reusable blob suite through the layers: a DemoStorage (blobs written to a memory
layer, read from it or from the SQLite base under it)."""
from __future__ import annotations

import os

import pytest
from zodb_blob_suite import blob_suite_tests, run_blob_suite_test

from amphora.storage.demo import DemoStorage
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
