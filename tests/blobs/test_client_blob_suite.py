"""ZODB's reusable blob suite (with packing and undo) through ``ZODB.DB`` over the client
storage: a real ``amphora serve`` process serving SQLite files (history-preserving, and
history-free without undo); each test's client keeps its blob cache in the test's blob
directory."""
from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from zodb_blob_suite import blob_suite_tests, run_blob_suite_test

from amphora.storage.client import ClientStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverprocess import ServerProcess, shared_server  # noqa: E402

SKIP = {"blob_packing_txt": "packs at times read from the suite's fake clock, which moves "
        "a second at each reading in the test process only (the server's tids come from "
        "the real one), and looks for the served storage's files by name (fshelper); "
        "tests/blobs/test_client_blobs.py packs blobs through the client"}
_history_free: dict[str, ServerProcess] = {}


def _client(server_of):
    def factory(name: str, blob_dir: str) -> ClientStorage:
        server = server_of()
        # (a name that is also a PostgreSQL schema's: a letter first)
        return ClientStorage(server.host, server.port, storage=f"b{uuid.uuid4().hex}",
                             blob_cache_dir=blob_dir)
    return factory


@pytest.fixture(scope="module")
def history_free_server():
    directory = tempfile.mkdtemp(prefix="amphora-served-hf-")
    server = _history_free["server"] = ServerProcess(
        f"sqlite:///{directory}/{{name}}.db?keep_history=false")
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "Client", _client(lambda: shared_server("sqlite")), skip=SKIP, test_packing=True,
    test_undo=True))
def test_client_over_sqlite(layer, test):
    run_blob_suite_test(layer, test)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "ClientPostgreSQL", _client(lambda: shared_server("postgresql")), skip=SKIP,
    test_packing=True, test_undo=True))
def test_client_over_postgresql(layer, test):
    """The client of a served PostgreSQL schema: blobs kept in the database, streamed
    to the client through the server's blob cache."""
    run_blob_suite_test(layer, test)


@pytest.mark.parametrize("layer,test", blob_suite_tests(
    "ClientHistoryFree", _client(lambda: _history_free["server"]), test_undo=False, skip={
        "blob_connection_txt": "a connection reads a blob after another one replaced it, "
        "from a snapshot older than the replacement: a history-free file keeps no such "
        "revision (ReadConflictError)"}))
def test_client_over_history_free_sqlite(history_free_server, layer, test):
    run_blob_suite_test(layer, test)
