"""A commit whose connection is its transaction's only data manager travels as one
request: the server votes and, on success, finishes at once (the commit lock released
without waiting for a FINISH round trip); the reply carries the tid. A transaction of
several data managers keeps two-phase commit: all vote before any finishes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction
from BTrees.Length import Length
from persistent.mapping import PersistentMapping

import amphora
from amphora.errors import ConflictError
from amphora.server import protocol as p

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import RawClient, hello, raw_connection, record_requests, value_on  # noqa: E402
from counters import Tally  # noqa: E402

REMOTE_LIKE = [sys.executable, str(Path(__file__).resolve().parent / "serve_as_remote.py")]
BOTH_PATHS = pytest.mark.parametrize("program", [None, REMOTE_LIKE], ids=["in-loop", "threads"])


def commits_and_finishes(sent: list[str]) -> tuple[int, int]:
    return sent.count(p.COMMIT), sent.count(p.FINISH)


# -- the only data manager: one request ------------------------------------------------------

@BOTH_PATHS
def test_a_commit_of_one_connection_is_one_request_and_others_hear_of_it(servers, program):
    server = servers(program=program)
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["x"] = 1
    other_db = amphora.open(f"amphora://{server.address}")
    other_tm = transaction.TransactionManager()
    other = other_db.open(other_tm)
    assert other.root()["x"] == 1  # cached by the other client
    other_tm.abort()
    beside_tm = transaction.TransactionManager()
    beside = db.open(beside_tm)  # another connection of the committing database
    assert beside.root()["x"] == 1
    beside_tm.abort()

    sent = record_requests(db)
    before = db.storage.lastTransaction()
    with db.transaction() as conn:
        conn.root()["x"] = 2
    assert commits_and_finishes(sent) == (1, 0)
    tid = db.storage.lastTransaction()
    assert tid > before
    assert conn.root()._p_serial == tid  # the connection's objects carry the tid
    beside_tm.begin()
    assert beside.root()["x"] == 2  # invalidated in commit order, not stale
    other_db.storage.sync()
    other_tm.begin()
    assert other.root()["x"] == 2
    assert other_db.storage.lastTransaction() == tid
    for closing in (beside_tm, other_tm):
        closing.abort()
    other.close()
    beside.close()
    other_db.close()
    db.close()
    assert value_on(server, "x") == 2


def test_a_raw_commit_with_finish_is_answered_with_its_tid_and_needs_no_finish(servers):
    server = servers()
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["x"] = PersistentMapping(n=1)
        record = conn.root()["x"]
    oid, read = record._p_oid, record._p_serial
    data = db.storage.loadSerial(oid, read)
    client = RawClient(server)
    commit = client.request(p.COMMIT, [b"", b"", b""], None, {oid: data}, {oid: read}, {}, True)
    finish = client.request(p.FINISH)
    answers = [client.next(), client.next()]
    client.close()
    assert answers[0][:2] == [p.REPLY, commit] and answers[0][2] > read
    assert answers[1][:3] == [p.ERROR, finish, "StorageTransactionError"]  # nothing to finish
    db.storage.sync()
    assert db.storage.lastTransaction() == answers[0][2]
    db.close()


@BOTH_PATHS
@pytest.mark.parametrize("kind", [Length, Tally], ids=["merged-by-server", "by-client"])
def test_a_conflict_merged_in_a_one_phase_commit_leaves_no_unmerged_record_cached(
        servers, program, kind):
    """The record this client sent is not the one committed: the database's record cache
    must not keep it for the other connections."""
    server = servers(program=program)
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["counter"] = kind(5)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    counter = conn.root()["counter"]
    assert counter() == 5
    with amphora.open(f"amphora://{server.address}").transaction() as elsewhere:
        elsewhere.root()["counter"].change(10)  # after `conn` read it
    sent = record_requests(db)
    counter.change(100)
    tm.commit()
    assert commits_and_finishes(sent) == (1, 0)
    beside_tm = transaction.TransactionManager()
    beside = db.open(beside_tm)
    assert beside.root()["counter"]() == 115
    assert conn.root()["counter"]() == 115
    beside_tm.abort()
    beside.close()
    conn.close()
    db.close()
    assert value_on(server, "counter") == 115


@pytest.mark.parametrize("version", [2, 3])
def test_a_client_of_an_older_protocol_is_refused_at_the_handshake(servers, version):
    """Version 3 added COMMIT's finish, version 4 MERGED and records pushed with commits;
    versions are never negotiated: an older client is refused, told the version spoken,
    before any request."""
    assert p.VERSION == 4
    server = servers()
    sock = raw_connection(server)
    sock.sendall(hello(version=version))
    decoder = p.FrameDecoder()
    messages: list = []
    while data := sock.recv(65536):
        messages += decoder.feed(data)
    sock.close()
    assert messages[0][:2] == [p.ERROR, 0]
    assert f"version {version} is not supported" in messages[0][3]
    assert "version 4" in messages[0][3]


# -- several data managers: two-phase ----------------------------------------------------------

class FailingVote:
    """A data manager voting last that refuses to commit."""

    def __init__(self):
        self.aborted = False

    def sortKey(self) -> str:
        return "~ after every connection"

    def abort(self, txn) -> None:
        self.aborted = True

    tpc_abort = abort

    def tpc_begin(self, txn) -> None:
        pass

    def commit(self, txn) -> None:
        pass

    def tpc_vote(self, txn) -> None:
        raise ConflictError("this data manager refuses")

    def tpc_finish(self, txn) -> None:
        raise AssertionError("finished after a failed vote")


@BOTH_PATHS
def test_a_second_data_manager_keeps_two_phase_and_its_failed_vote_commits_nothing(
        servers, program):
    server = servers(program=program)
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["x"] = 1
    sent = record_requests(db)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["x"] = 2
    refusing = FailingVote()
    tm.get().join(refusing)
    with pytest.raises(ConflictError, match="refuses"):
        tm.commit()
    tm.abort()
    assert refusing.aborted
    assert commits_and_finishes(sent) == (1, 0)  # voted, then aborted
    assert p.ABORT in sent
    assert conn.root()["x"] == 1
    assert value_on(server, "x") == 1
    conn.close()
    db.close()


def test_two_servers_in_one_transaction_commit_both_in_two_phases(servers):
    first, second = servers(), servers()
    db1 = amphora.open(f"amphora://{first.address}")
    db2 = amphora.open(f"amphora://{second.address}")
    sent1, sent2 = record_requests(db1), record_requests(db2)
    tm = transaction.TransactionManager()
    conn1, conn2 = db1.open(tm), db2.open(tm)
    conn1.root()["x"] = "one"
    conn2.root()["x"] = "two"
    tm.commit()
    assert commits_and_finishes(sent1) == (1, 1)
    assert commits_and_finishes(sent2) == (1, 1)
    assert (value_on(first, "x"), value_on(second, "x")) == ("one", "two")

    # the second refuses (a conflict it cannot merge): neither commits
    with db2.transaction() as elsewhere:
        elsewhere.root()["x"] = "changed elsewhere"
    conn1.root()["x"] = "one again"
    conn2.root()["x"] = "two again"  # read before the change elsewhere: a conflict
    with pytest.raises(ConflictError):
        tm.commit()
    tm.abort()
    assert (value_on(first, "x"), value_on(second, "x")) == ("one", "changed elsewhere")
    conn1.close()
    conn2.close()
    db1.close()
    db2.close()


# -- an abort after a one-phase vote -----------------------------------------------------------

@BOTH_PATHS
def test_an_abort_after_a_one_phase_vote_keeps_the_commit_and_leaves_no_stale_object(
        servers, program):
    """An interrupt between vote and finish: the commit is already made; the client's
    last tid and every cache show it."""
    server = servers(program=program)
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["item"] = PersistentMapping(n=1)
    beside_tm = transaction.TransactionManager()
    beside = db.open(beside_tm)
    assert beside.root()["item"]["n"] == 1  # cached
    beside_tm.abort()
    sent = record_requests(db)
    before = db.storage.lastTransaction()

    tm = transaction.TransactionManager()
    conn = db.open(tm)
    item = conn.root()["item"]
    item["n"] = 2
    conn.root()["new"] = PersistentMapping(made="in the interrupted transaction")
    txn = tm.get()
    conn.tpc_begin(txn)
    conn.commit(txn)
    conn.tpc_vote(txn)
    conn.tpc_abort(txn)  # instead of tpc_finish
    tm.abort()

    assert commits_and_finishes(sent) == (1, 0) and p.ABORT not in sent
    assert db.storage.lastTransaction() > before
    assert value_on(server, "item")["n"] == 2
    assert conn.root()["item"]["n"] == 2  # reloaded, not the state before
    assert conn.root()["new"]["made"] == "in the interrupted transaction"
    beside_tm.begin()
    assert beside.root()["item"]["n"] == 2
    with db.transaction() as later:  # and the next commit goes on from there
        later.root()["item"]["n"] += 1
    assert value_on(server, "item")["n"] == 3
    beside_tm.abort()
    tm.abort()
    beside.close()
    conn.close()
    db.close()
