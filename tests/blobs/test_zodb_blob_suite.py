"""ZODB's reusable blob suite (with packing and undo) over amphora's blob storages,
through ``ZODB.DB``: memory, SQLite and PostgreSQL (and history-free SQLite and
PostgreSQL, without undo)."""
from __future__ import annotations

import os
from typing import Any

import pgserver
import pytest
from zodb_blob_suite import blob_suite_tests, run_blob_suite_test

from amphora.storage.memory import MemoryStorage
from amphora.storage.sqlite import SQLiteStorage

HISTORY_FREE_SKIPS = {
    "blob_connection_txt": "a connection reads a blob after another one replaced it, from "
    "a snapshot older than the replacement: a history-free storage keeps no such revision "
    "(ReadConflictError)"}


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
    "SQLiteHistoryFree", _sqlite_history_free, test_undo=False, skip=HISTORY_FREE_SKIPS))
def test_sqlite_history_free(layer, test):
    run_blob_suite_test(layer, test)


def _postgresql(keep_history: bool):
    """Opens the storage of ``name`` in a schema of its own (the suite runs each test in
    a new working directory, so the name's full path is the test's), its blob cache in
    ``blob_dir``."""
    def open_postgresql(name: str, blob_dir: str) -> Any:
        from amphora.storage.postgresql import PostgreSQLStorage
        return PostgreSQLStorage(pgserver.require().dsn(),
                                 schema=pgserver.claim_schema(os.path.abspath(name)),
                                 keep_history=keep_history,
                                 blob_cache_dir=os.path.abspath(blob_dir))
    return open_postgresql


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "PostgreSQL", _postgresql(True), test_packing=True, test_undo=True,
    test_blob_storage_recovery=True))
def test_postgresql(layer, test):
    run_blob_suite_test(layer, test)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "PostgreSQLHistoryFree", _postgresql(False), test_undo=False, skip=HISTORY_FREE_SKIPS))
def test_postgresql_history_free(layer, test):
    run_blob_suite_test(layer, test)
