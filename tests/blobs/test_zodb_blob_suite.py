"""ZODB's reusable blob suite (with packing and undo) over amphora's blob storages,
through ``ZODB.DB``: memory, SQLite (and a history-free SQLite file, without undo)."""
from __future__ import annotations

import os

import pytest
from zodb_blob_suite import blob_suite_tests, run_blob_suite_test

from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage


def _memory(name: str, blob_dir: str) -> MemoryStorage:
    return MemoryStorage(name, blob_dir=os.path.abspath(blob_dir))


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "Memory", _memory, test_packing=True, test_undo=True, test_blob_storage_recovery=True))
def test_memory(layer, test):
    run_blob_suite_test(layer, test)


def _sqlite(name: str, blob_dir: str) -> SQLiteStorage:
    return SQLiteStorage(f"{name}.db", blob_dir=blob_dir)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "SQLite", _sqlite, test_packing=True, test_undo=True, test_blob_storage_recovery=True))
def test_sqlite(layer, test):
    run_blob_suite_test(layer, test)


def _sqlite_history_free(name: str, blob_dir: str) -> SQLiteStorage:
    return SQLiteStorage(f"{name}.db", blob_dir=blob_dir, keep_history=False)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "SQLiteHistoryFree", _sqlite_history_free, test_undo=False, skip={
        "blob_connection_txt": "a connection reads a blob after another one replaced it, "
        "from a snapshot older than the replacement: a history-free file keeps no such "
        "revision (ReadConflictError)"}))
def test_sqlite_history_free(layer, test):
    run_blob_suite_test(layer, test)
