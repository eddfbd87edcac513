"""Blobs in real processes on SQLite and PostgreSQL: a 200 MB blob streamed through a
process whose memory stays far below its size, and a process killed (SIGKILL) in the
middle of a commit with blobs, which leaves all of them or none."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pgserver
import pytest

import amphora

MIB = 1 << 20
BIG_MIB = 200


def run_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


STREAM = """
    import hashlib, json, sys
    import transaction, amphora
    uri, mib = sys.argv[1], int(sys.argv[2])
    def chunk(i):  # 1 MiB, different for each i
        return hashlib.sha256(i.to_bytes(4, "big")).digest() * 32768
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.big = amphora.Blob()
        with conn.root.big.open("w") as file:
            for i in range(mib):
                file.write(chunk(i))
    db.close()
    db = amphora.open(uri)  # (a client's blob cache starts empty: read from the server)
    digest, size = hashlib.sha256(), 0
    with db.transaction() as conn:
        with conn.root.big.open("r") as file:
            while True:
                data = file.read(1 << 20)
                if not data:
                    break
                digest.update(data)
                size += len(data)
    db.close()
    # The peak resident memory of this program: VmHWM, the high-water mark of its own
    # address space (ru_maxrss would count the test process it was spawned from, whose
    # memory the child shares until exec and which grows over a full run of the suite).
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"sha256": digest.hexdigest(), "size": size, "peak": peak_kib * 1024}))
"""


def chunk_count(uri: str) -> int:
    """How many rows the PostgreSQL storage of ``uri`` has in ``blob_chunk``."""
    schema = uri.rsplit("schema=", 1)[1]
    return pgserver.require().sql(schema, "SELECT count(*) FROM blob_chunk")[0][0]


def uri_of(kind: str, path) -> str:
    return f"sqlite:///{path}" if kind == "sqlite" else pgserver.schema_uri(str(path))


def stream(uri: str, mib: int) -> int:
    """Write a blob of ``mib`` MiB to ``uri`` and read it back in a child process; check
    what it read; returns the child's peak memory in bytes."""
    child = run_child(STREAM, uri, str(mib))
    out, err = child.communicate(timeout=240)
    assert child.returncode == 0, err
    found = json.loads(out)
    expected = hashlib.sha256()
    for i in range(mib):
        expected.update(hashlib.sha256(i.to_bytes(4, "big")).digest() * 32768)
    assert found["size"] == mib * MIB
    assert found["sha256"] == expected.hexdigest()
    return found["peak"]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="the peak memory is read from Linux's /proc/self/status")
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_200_mb_blob_is_streamed_not_held_in_memory(tmp_path, kind):
    peak = stream(uri_of(kind, tmp_path / "big.db"), BIG_MIB)
    # The whole process (Python, amphora, ZODB, the database driver) stays well under the
    # blob's size, which a process holding the blob whole (once, while writing or reading
    # it) would exceed: the blob went through in chunks. (About 40 MiB with SQLite, 50
    # MiB with PostgreSQL.)
    assert peak < BIG_MIB * MIB * 3 // 4, peak


# A child that commits 50 blobs and stops (to be killed) at a given point of the commit.
KILLED = """
    import sys, time
    import amphora
    from amphora.storage.sqlite import SQLiteStorage
    uri, stop_at = sys.argv[1], sys.argv[2]
    db = amphora.open(uri)
    storage = db.storage
    hook = getattr(storage, stop_at)
    def stop(*args):
        result = hook(*args)
        print("stopped", flush=True)
        time.sleep(120)
        return result
    setattr(storage, stop_at, stop)
    with db.transaction() as conn:
        conn.root.blobs = [amphora.Blob(b"blob %d" % i) for i in range(50)]
"""


def kill_at(uri: str, stop_at: str) -> None:
    """Run the committing child until it reaches ``stop_at`` and SIGKILL it there."""
    child = run_child(KILLED, uri, stop_at)
    try:
        line = child.stdout.readline()
        assert line.strip() == "stopped", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def blob_files(path) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(f"{path}.blobs")
                  for name in names if name.endswith(".blob"))


def make_database(uri: str) -> None:
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.before = amphora.Blob(b"committed before")
    db.close()


def test_killed_after_placing_the_files_but_before_committing_leaves_none(tmp_path):
    path = tmp_path / "app.db"
    make_database(f"sqlite:///{path}")
    kill_at(f"sqlite:///{path}", "_place_blobs")
    assert len(blob_files(path)) == 1 + 50  # the dead commit's files were placed ...
    db = amphora.open(f"sqlite:///{path}")  # ... and the next opening removes them
    assert len(blob_files(path)) == 1
    assert os.listdir(f"{path}.blobs/pending") == []
    with db.transaction() as conn:
        assert "blobs" not in conn.root()
        with conn.root.before.open() as file:
            assert file.read() == b"committed before"
    db.close()


def test_killed_after_committing_leaves_all(tmp_path):
    path = tmp_path / "app.db"
    make_database(f"sqlite:///{path}")
    kill_at(f"sqlite:///{path}", "_settle_blobs")  # committed; its journal not yet removed
    db = amphora.open(f"sqlite:///{path}")
    assert len(blob_files(path)) == 1 + 50
    assert os.listdir(f"{path}.blobs/pending") == []
    all_fifty_are_there(db)
    db.close()


def all_fifty_are_there(db) -> None:
    with db.transaction() as conn:
        blobs = conn.root.blobs
        assert len(blobs) == 50
        for i, blob in enumerate(blobs):
            with blob.open() as file:
                assert file.read() == b"blob %d" % i


def test_killed_on_postgresql_after_writing_the_chunks_but_before_committing_leaves_none(
        tmp_path):
    uri = pgserver.schema_uri(str(tmp_path / "app"))
    make_database(uri)
    kill_at(uri, "_write_blobs")  # the chunks are written in the uncommitted transaction
    assert chunk_count(uri) == 1  # rolled back by the server when the session died
    db = amphora.open(uri)
    with db.transaction() as conn:
        assert "blobs" not in conn.root()
        with conn.root.before.open() as file:
            assert file.read() == b"committed before"
        conn.root.after = amphora.Blob(b"the commit lock is free again")
    db.close()


def test_killed_on_postgresql_after_committing_leaves_all(tmp_path):
    uri = pgserver.schema_uri(str(tmp_path / "app"))
    make_database(uri)
    kill_at(uri, "_settle_blobs")  # committed, the files not yet kept in the cache
    assert chunk_count(uri) == 1 + 50
    db = amphora.open(uri)
    all_fifty_are_there(db)
    db.close()
