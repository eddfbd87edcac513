"""Conflicts on ``BTrees.Length.Length`` merged by the server (MERGED), and small records
pushed with commits, which a client storage keeps as current and reads without asking."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import transaction
from BTrees.Length import Length
from persistent.mapping import PersistentMapping

import amphora
from amphora.server import protocol as p

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import RawClient, record_requests, stale_counter, value_on  # noqa: E402
from counters import Tally  # noqa: E402
from serverprocess import ServerProcess  # noqa: E402

LOADS = {p.LOAD_BEFORE, p.LOAD_AHEAD, p.LOAD_MANY, p.LOAD_SERIAL}


def loads(sent: list[str]) -> list[str]:
    return [method for method in sent if method in LOADS]


def commit(server: ServerProcess, change) -> None:
    """``change(root)`` committed by another client."""
    db = amphora.open(f"amphora://{server.address}")
    try:
        with db.transaction() as conn:
            change(conn.root())
    finally:
        db.close()


# -- MERGED ------------------------------------------------------------------------------------

def test_a_stale_two_phase_commit_on_a_length_is_merged_by_the_server(servers, tmp_path):
    server = servers(f"sqlite:///{tmp_path / 'data.db'}")
    db, oid, committed, read = stale_counter(server, Length)
    head = pickle.dumps(Length, 3)
    assert db.storage.loadSerial(oid, read) == head + pickle.dumps(1, 3)
    assert db.storage.loadSerial(oid, committed) == head + pickle.dumps(5, 3)
    db.close()

    client = RawClient(server)
    mine = head + pickle.dumps(3, 3)  # read 1, wrote 3: +2
    request = client.request(p.COMMIT, [b"", b"", b""], None, {oid: mine}, {oid: read}, {})
    merged = client.next()
    assert merged[0] != p.RESOLVE
    assert merged == [p.MERGED, request, oid, head + pickle.dumps(5 + 3 - 1, 3)]
    assert client.next() == [p.REPLY, request, None]
    finish = client.request(p.FINISH)
    reply = client.next()
    assert reply[:2] == [p.REPLY, finish] and reply[2] > committed
    client.close()
    assert value_on(server, "counter") == 7


# -- pushed records ----------------------------------------------------------------------------

def test_a_pushed_record_is_read_without_a_request(servers):
    server = servers()
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["m"] = PersistentMapping(k=1)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    assert conn.root()["m"]["k"] == 1
    tm.abort()

    def change(root):
        root["m"]["k"] = 2
    commit(server, change)
    db.storage.sync()  # the push has arrived
    sent = record_requests(db)
    tm.begin()
    assert conn.root()["m"]["k"] == 2
    assert loads(sent) == []
    tm.abort()
    conn.close()
    db.close()


def test_an_older_snapshot_does_not_read_the_pushed_record(servers):
    server = servers()
    commit(server, lambda root: root.__setitem__("m", PersistentMapping(k=1)))
    db = amphora.open(f"amphora://{server.address}")
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    tm.begin()
    root = conn.root()  # the snapshot begins; "m" is not loaded in this connection
    mapping = root["m"]
    assert mapping._p_changed is None  # a ghost

    def change(root):
        root["m"]["k"] = 2
    commit(server, change)
    db.storage.sync()  # the push has arrived: its record is kept as current
    sent = record_requests(db)
    assert mapping["k"] == 1  # the old transaction's snapshot: the old value
    assert loads(sent), "the old record came from the server"
    tm.abort()
    sent.clear()
    tm.begin()
    assert conn.root()["m"]["k"] == 2
    assert loads(sent) == []  # now the kept record serves
    tm.abort()
    conn.close()
    db.close()


def test_a_record_over_512_bytes_is_not_kept(servers):
    server = servers()
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["m"] = PersistentMapping(k="small")
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    assert conn.root()["m"]["k"] == "small"
    tm.abort()

    big = "x" * 1000

    def change(root):
        root["m"]["k"] = big
    commit(server, change)
    db.storage.sync()
    sent = record_requests(db)
    tm.begin()
    assert conn.root()["m"]["k"] == big
    assert loads(sent), "a record of over 512 bytes is not pushed: it is loaded"
    tm.abort()
    conn.close()
    db.close()


# -- a stale commit through the client storage -------------------------------------------------

@pytest.mark.parametrize("kind", [Length, Tally], ids=["merged-by-server", "by-client"])
def test_a_stale_commit_is_merged_in_one_request_and_its_record_kept(servers, kind):
    server = servers()
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["counter"] = kind(5)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    counter = conn.root()["counter"]
    assert counter() == 5

    def change(root):
        root["counter"].change(10)
    commit(server, change)  # after this client read the counter
    sent = record_requests(db)
    counter.change(100)
    tm.commit()
    assert sent.count(p.COMMIT) == 1
    assert p.LOAD_SERIAL not in sent
    assert value_on(server, "counter") == 115
    sent.clear()
    tm.begin()
    assert conn.root()["counter"]() == 115
    if kind is Length:
        assert loads(sent) == [], "the record the server merged is kept"
    tm.abort()
    conn.close()
    db.close()
