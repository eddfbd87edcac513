"""Change feeds through ``amphora serve``: a client's ``db.changes()`` reads the served
storage's transaction log, sees commits of other clients and of other processes writing
the served file, raises ``ResyncRequired`` after a pack, and waits for the server's push
of a commit instead of asking again and again."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import transaction

import amphora
from amphora.feeds import ResyncRequired
from amphora.storage.sqlite import SQLiteStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverprocess import ServerProcess  # noqa: E402

pytestmark = pytest.mark.timeout(120)

WRITE_DIRECTLY = """\
import sys, amphora
db = amphora.open("sqlite:///" + sys.argv[1])
with db.transaction("written directly") as conn:
    conn.root()["direct"] = 42
print(db.last_transaction().hex())
db.close()
"""


@pytest.fixture
def served(tmp_path):
    """A real server process on a SQLite file: (server, path of the file)."""
    path = tmp_path / "served.db"
    server = ServerProcess(f"sqlite:///{path}")
    yield server, path
    server.stop()


def commit(db, key: str, user: str, note: str, **extension) -> tuple[bytes, set]:
    """Set root[key] with metadata; returns (tid, oids written)."""
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    txn = manager.begin()
    txn.setUser(user)
    txn.note(note)
    for name, value in extension.items():
        txn.setExtendedInfo(name, value)
    conn.root()[key] = {"key": key}
    manager.commit()
    oids = {conn.root()._p_oid}
    conn.close()
    return db.last_transaction(), oids


def write_directly(path: Path) -> str:
    """Commit from another process opening the served file itself; returns its tid."""
    done = subprocess.run([sys.executable, "-c", WRITE_DIRECTLY, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_client_feed_sees_other_clients_and_direct_writers_in_order_as_committed(served):
    server, path = served
    reader = amphora.open(f"amphora://{server.address}")
    writer = amphora.open(f"amphora://{server.address}")
    start = reader.last_transaction()
    first = commit(writer, "a", "ann", "first", ticket=1)
    direct = write_directly(path)
    last = commit(writer, "b", "bob", "last", ticket=2, tags=["x"])

    changes = list(reader.changes(since=start, timeout=0.5))

    assert [c.tid.hex() for c in changes] == [first[0].hex(), direct, last[0].hex()]
    assert [c.description for c in changes] == [b"first", b"written directly", b"last"]
    assert changes[0].user.endswith(b"ann") and changes[2].user.endswith(b"bob")
    assert [c.extension for c in changes] == [{"ticket": 1}, {}, {"ticket": 2, "tags": ["x"]}]
    assert set(changes[0].oids) == first[1] and set(changes[2].oids) == last[1]
    assert changes[1].oids == (b"\0" * 8,)  # the root, which the direct writer changed
    # the log the client reads is the served file's own
    storage = SQLiteStorage(str(path), read_only=True)
    try:
        assert [row[0] for row in storage.transaction_log(start, 10)] == [c.tid for c in changes]
    finally:
        storage.close()
    writer.close()
    reader.close()


def test_a_feed_asked_to_start_before_a_pack_through_the_client_requires_a_resync(served):
    server, path = served
    db = amphora.open(f"amphora://{server.address}")
    start = db.last_transaction()
    commit(db, "a", "ann", "replaced below")
    for n in range(3):  # each rewrites the root: the first commit holds no current record
        commit(db, "a", "ann", f"rewrite {n}")
    db.pack()
    packed = db.storage.packed_through()
    assert packed > start

    with pytest.raises(ResyncRequired) as caught:
        list(db.changes(since=start, timeout=0))

    assert caught.value.packed_through == packed
    storage = SQLiteStorage(str(path), read_only=True)
    try:
        assert storage.packed_through() == packed  # what the served file says
    finally:
        storage.close()
    after, _ = commit(db, "b", "bob", "after the pack")
    assert after in [c.tid for c in db.changes(since=packed, timeout=0)]
    db.close()


def test_a_waiting_feed_returns_the_change_another_client_commits(served):
    server, _ = served
    reader = amphora.open(f"amphora://{server.address}")
    writer = amphora.open(f"amphora://{server.address}")
    start = reader.last_transaction()
    got: list = []
    thread = threading.Thread(
        target=lambda: got.append(next(iter(reader.changes(since=start)))), daemon=True)
    thread.start()
    tid, oids = commit(writer, "woken", "ann", "wake up")
    thread.join(timeout=60)
    assert not thread.is_alive(), "the feed kept waiting after the commit"
    assert [(c.tid, c.description, set(c.oids)) for c in got] == [(tid, b"wake up", oids)]
    writer.close()  # the committing client was connected all along
    reader.close()


@pytest.mark.parametrize("committer", ["another client", "a process on the file"])
def test_poll_without_a_timeout_returns_on_the_push_of_a_commit(served, committer):
    """``poll(None)`` sends nothing while it waits: only the server's push can end it."""
    server, path = served
    client = amphora.open(f"amphora://{server.address}")
    storage = client.storage
    ready = threading.Event()
    woke: list[bool] = []

    def wait() -> None:
        storage.transaction_log(storage.lastTransaction(), 1)  # what the feed last saw
        ready.set()
        woke.append(storage.poll(None))

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert ready.wait(30)
    if committer == "another client":
        other = amphora.open(f"amphora://{server.address}")
        tid = commit(other, "pushed", "ann", "pushed")[0].hex()
        other.close()
    else:
        tid = write_directly(path)
    thread.join(timeout=60)
    assert not thread.is_alive() and woke == [True]
    assert client.last_transaction().hex() == tid
    client.close()
