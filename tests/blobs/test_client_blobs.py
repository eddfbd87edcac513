"""Blobs through the client storage (``amphora://``), served by a real ``amphora serve``
process over SQLite: sizes from nothing to several chunks, many per commit, two clients
seeing each other's blobs, an old snapshot reading its old revision, the blob cache's
size limit, a commit whose server restarted between its storeBlob and its vote, and a
big blob that neither process holds in memory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transaction
from test_blob_processes import stream

import amphora
from amphora.errors import StorageError, Unsupported
from amphora.storage.base import TransactionMetaData
from amphora.storage.client import ClientStorage
from amphora.utils import z64

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverprocess import ServerProcess  # noqa: E402

MIB = 1 << 20


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(f"sqlite:///{tmp_path}/served.db")
    yield process
    process.stop()


def _read(blob) -> bytes:
    with blob.open("r") as file:
        return file.read()


def _blob_files(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".blob"))


def test_blobs_of_every_size_many_per_commit_reach_another_client(server, tmp_path):
    sizes = [0, 1, 1000, 3 * MIB + 5]  # the last one: several chunks each way
    values = [os.urandom(size) for size in sizes]
    writer = amphora.open(f"amphora://{server.address}")
    with writer.transaction() as conn:
        conn.root.blobs = [amphora.Blob(value) for value in values]
        conn.root.many = [amphora.Blob(b"blob %d" % i) for i in range(50)]
    reader = amphora.open(f"amphora://{server.address}?blob_cache_dir={tmp_path}/cache")
    with reader.transaction() as conn:
        assert [_read(blob) for blob in conn.root.blobs] == values
        assert [_read(blob) for blob in conn.root.many] == [b"blob %d" % i
                                                           for i in range(50)]
    assert len(_blob_files(tmp_path / "cache")) == 54  # fetched into the cache given
    with reader.transaction() as conn:  # the reader replaces one; the writer sees it
        with conn.root.blobs[1].open("w") as file:
            file.write(b"replaced")
    with writer.transaction() as conn:
        assert _read(conn.root.blobs[1]) == b"replaced"
    writer.close()
    reader.close()


def test_an_old_snapshot_reads_its_old_revision(server):
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root.doc = amphora.Blob(b"first")
    old = transaction.TransactionManager()
    old_conn = db.open(old)
    old_blob = old_conn.root()["doc"]
    other = amphora.open(f"amphora://{server.address}")  # a cache without either revision
    with other.transaction() as conn:
        with conn.root.doc.open("w") as file:
            file.write(b"second")
    with db.transaction() as conn:
        assert _read(conn.root.doc) == b"second"
    assert _read(old_blob) == b"first"  # the snapshot taken before the change
    old.abort()
    old_conn.close()
    other.close()
    db.close()


def test_the_cache_stays_within_its_size_and_refetches_what_it_evicted(server, tmp_path):
    cache = tmp_path / "cache"
    values = [os.urandom(100_000) for _ in range(6)]
    writer = amphora.open(f"amphora://{server.address}")
    with writer.transaction() as conn:
        conn.root.blobs = [amphora.Blob(value) for value in values]
    writer.close()
    reader = amphora.open(f"amphora://{server.address}?blob_cache_dir={cache}"
                          "&blob_cache_size=250000")
    for _ in range(2):
        with reader.transaction() as conn:
            for blob, value in zip(conn.root.blobs, values):
                assert _read(blob) == value
                used = sum(os.path.getsize(cache / name) for name in _blob_files(cache))
                assert used <= 250_000
    assert len(_blob_files(cache)) == 2
    reader.close()
    assert _blob_files(cache)  # a cache directory given is kept


def test_the_default_cache_is_removed_at_close(server):
    client = ClientStorage(server.host, server.port)
    directory = client.temporaryDirectory()
    assert os.path.isdir(directory)
    client.close()
    assert not os.path.exists(directory)


def _until_reconnected(action, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except StorageError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def test_a_commit_with_blobs_survives_a_server_restart_before_its_vote(server, tmp_path):
    client = ClientStorage(server.host, server.port, wait_timeout=60)
    oids = client.new_oids(2)
    txn = TransactionMetaData()
    client.tpc_begin(txn)
    values = [os.urandom(2 * MIB), b"small"]
    for oid, value in zip(oids, values):
        path = os.path.join(client.temporaryDirectory(), oid.hex())
        with open(path, "wb") as file:
            file.write(value)
        client.storeBlob(oid, z64, b"a record", path, "", txn)
        assert not os.path.exists(path)  # taken by the client
    server.terminate()  # the files uploaded so far are gone with the session
    server.restart()
    client.tpc_vote(txn)  # waits for the connection, uploads the files again
    tid = client.tpc_finish(txn)
    other = ClientStorage(server.host, server.port, blob_cache_dir=str(tmp_path / "other"))
    for oid, value in zip(oids, values):
        with open(_until_reconnected(lambda: other.loadBlob(oid, tid)), "rb") as file:
            assert file.read() == value
        with client.openCommittedBlobFile(oid, tid) as file:  # cached by its commit
            assert file.read() == value
    other.close()
    client.close()


def test_an_aborted_commit_leaves_no_files_on_either_side(server, tmp_path):
    client = ClientStorage(server.host, server.port)
    oid = client.new_oid()
    txn = TransactionMetaData()
    client.tpc_begin(txn)
    path = os.path.join(client.temporaryDirectory(), "blob")
    with open(path, "wb") as file:
        file.write(b"never committed")
    client.storeBlob(oid, z64, b"a record", path, "", txn)
    client.tpc_abort(txn)
    assert os.listdir(client.temporaryDirectory()) == []
    client.close()
    deadline = time.monotonic() + 30  # the server removes the upload when the client leaves
    while os.listdir(tmp_path / "served.db.blobs" / "tmp") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path / "served.db.blobs" / "tmp") == []


BIG_MIB = 150


def _peak_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="peak memory is read from /proc and ru_maxrss (KiB) on Linux")
def test_a_big_blob_goes_through_the_server_in_chunks(server):
    peak = stream(f"amphora://{server.address}", BIG_MIB)
    # Each process stays well under the blob's size, which one holding the blob whole
    # would exceed (see test_blob_processes.py for the margin).
    assert peak < BIG_MIB * MIB * 3 // 4, peak
    server_peak = _peak_of(server.proc.pid)
    assert server_peak < BIG_MIB * MIB * 3 // 4, server_peak


# ``amphora serve`` with one more scheme, ``noblobs://``: a memory storage that keeps no
# blob files (every storage amphora opens by URI keeps them now)
SERVE_WITHOUT_BLOBS = """
import sys
from amphora import cli, uri
from amphora.storage.memory import MemoryStorage

class NoBlobs(MemoryStorage):
    supports_blobs = False
    no_blobs_reason = "it keeps no blob files"

uri.SCHEMES["noblobs"] = lambda path, **options: (NoBlobs, options)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_served_storage_without_blobs_makes_the_client_refuse_them(tmp_path):
    server = ServerProcess("noblobs://", program=[sys.executable, "-c", SERVE_WITHOUT_BLOBS])
    try:
        client = ClientStorage(server.host, server.port)
        assert not client.supports_blobs
        with pytest.raises(Unsupported, match=re.escape(
                f"{client.getName()} keeps no blobs: it keeps no blob files")):
            client.temporaryDirectory()
        db = amphora.DB(client)
        with pytest.raises(Unsupported, match="keeps no blob files"):
            with db.transaction() as conn:
                conn.root.doc = amphora.Blob(b"refused")
        with db.transaction() as conn:  # nothing was stored
            assert "doc" not in conn.root()
        db.close()
    finally:
        server.stop()


def test_amphora_copy_restores_blobs_into_a_served_storage(server, tmp_path):
    source = amphora.open(f"sqlite:///{tmp_path}/source.db")
    with source.transaction() as conn:
        conn.root.doc = amphora.Blob(b"first")
    with source.transaction() as conn:
        with conn.root.doc.open("w") as file:
            file.write(b"second")
        conn.root.big = amphora.Blob(b"x" * (2 * MIB + 1))
    source.close()
    done = subprocess.run([sys.executable, "-m", "amphora", "copy",
                           f"sqlite:///{tmp_path}/source.db", f"amphora://{server.address}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    copy = amphora.open(f"amphora://{server.address}")
    with copy.transaction() as conn:
        assert _read(conn.root.doc) == b"second"
        assert _read(conn.root.big) == b"x" * (2 * MIB + 1)
        first = conn.root.doc._p_oid, copy.storage.history(conn.root.doc._p_oid, 2)[1]["tid"]
    with open(copy.storage.loadBlob(*first), "rb") as file:  # the older revision too
        assert file.read() == b"first"
    copy.close()
