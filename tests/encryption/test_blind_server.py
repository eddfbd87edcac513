"""An encrypted database served by ``amphora serve`` started without any key: the clients
hold the keyring, the server stores and serves sealed records.

Pack with garbage collection works through it (the client computes what is reachable and
tells the server the oids to keep), conflicts are merged by the clients, the JSON mirror
is refused, and neither the server's memory nor PostgreSQL's tables hold a key or a
plaintext name or value.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

import pgserver
import pytest
import serverprocess  # tests/server/serverprocess.py
import transaction
from BTrees.Length import Length
from persistent import Persistent
from persistent.mapping import PersistentMapping

import amphora
from amphora.storage.client import ClientStorage
from amphora.storage.encrypted import EncryptedStorage
from amphora.utils import maxtid

from .test_encrypted_storage import files_of

SECRETS = [b"ZanzibarLedger", b"quartermaster_notes", b"the launch code is 0451",
           b"BlindNode", b"payload_of_node", b"node value #"]


class ZanzibarLedger(Persistent):
    def __init__(self):
        self.quartermaster_notes = "the launch code is 0451"


class BlindNode(Persistent):
    def __init__(self, number: int, child: "BlindNode | None" = None):
        self.payload_of_node = f"node value #{number}"
        self.child = child


class Tally(Persistent):
    """A counter whose conflicts merge by adding: counts the merges made in this
    process (the server cannot make them: it cannot read the states)."""

    merges = 0

    def __init__(self):
        self.total = 0

    def _p_resolveConflict(self, old: dict, committed: dict, new: dict) -> dict:
        Tally.merges += 1
        return {"total": committed["total"] + new["total"] - old["total"]}


# -- servers without a key ------------------------------------------------------------------

def sqlite_server(tmp_path, history: bool = True) -> serverprocess.ServerProcess:
    query = "" if history else "?keep_history=false"
    return serverprocess.ServerProcess(f"sqlite:///{tmp_path}/{{name}}.db{query}")


def postgresql_server(tmp_path) -> tuple[serverprocess.ServerProcess, str]:
    """A server of the test PostgreSQL database's schemas, and the schema of this test."""
    pg = pgserver.require()
    schema = pgserver.schema_for(str(tmp_path / "blind"))
    pg.remember_schema(schema)
    return serverprocess.ServerProcess(pg.uri(schema="{name}")), schema


@pytest.fixture
def served(tmp_path, request):
    """``served(kind)``: a new ``amphora serve`` process (``sqlite``,
    ``sqlite-history-free`` or ``postgresql``) and the name of this test's storage on it;
    stopped after the test. Its command line names no keyring: the server has none."""
    started: list[serverprocess.ServerProcess] = []

    def start(kind: str) -> tuple[serverprocess.ServerProcess, str]:
        if kind == "postgresql":
            server, name = postgresql_server(tmp_path)
        else:
            server, name = sqlite_server(tmp_path, kind == "sqlite"), "blind"
        started.append(server)
        assert not any("key" in arg for arg in server.proc.args)
        return server, name
    yield start
    for server in started:
        server.stop()


def open_db(server: serverprocess.ServerProcess, name: str, keyring: amphora.Keyring
            ) -> amphora.DB:
    return amphora.DB(EncryptedStorage(ClientStorage(server.host, server.port, storage=name),
                                       keyring))


def raw_client(server: serverprocess.ServerProcess, name: str) -> ClientStorage:
    """A client without keys: sees what the server stores."""
    return ClientStorage(server.host, server.port, storage=name)


def exists(storage: Any, oid: bytes) -> bool:
    try:
        return storage.loadBefore(oid, maxtid) is not None
    except amphora.ObjectNotFoundError:
        return False


# -- pack with garbage collection --------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "sqlite-history-free", "postgresql"])
def test_pack_through_a_blind_server_deletes_exactly_the_unreachable_objects(
        served, keyring, kind):
    """A chain of objects is unlinked; while the packing client computes what to keep,
    another client creates an object and links part of the chain again. The pack is
    refused once (a commit came after the set), computed again with that commit, and
    deletes exactly the rest of the chain."""
    server, name = served(kind)
    db = open_db(server, name, keyring)
    with db.transaction() as conn:
        conn.root.kept = BlindNode(1, BlindNode(2))
        conn.root.dropped = BlindNode(3, BlindNode(4, BlindNode(5)))
        conn.root.ledger = ZanzibarLedger()
    with db.transaction() as conn:
        root = conn.root
        kept = [root.kept._p_oid, root.kept.child._p_oid, root.ledger._p_oid]
        unlinked, relinked = root.dropped._p_oid, root.dropped.child._p_oid
        relinked_child = root.dropped.child.child._p_oid
        root.ledger.quartermaster_notes = "revised"
        del root.dropped
    other = open_db(server, name, keyring)
    created = []
    inner = db.storage.storage
    pack = inner.pack
    asked = []

    def commit_meanwhile_then_pack(*args: Any, **kwargs: Any) -> None:
        asked.append(set(kwargs["reachable"]))
        if len(asked) == 1:  # the set is computed: another client commits before it is sent
            with other.transaction() as conn:
                conn.root.created = node = BlindNode(6)
                conn.root.again = conn.get(relinked)  # still stored: linked again
            created.append(node._p_oid)
        pack(*args, **kwargs)
    inner.pack = commit_meanwhile_then_pack
    raw = raw_client(server, name)
    before = len(raw)
    db.pack()
    assert len(asked) == 2  # refused once: StaleReachableError, then computed again
    assert relinked not in asked[0] and {relinked, relinked_child} <= asked[1]
    assert not exists(raw, unlinked)
    assert all(exists(raw, oid) for oid in [*kept, relinked, relinked_child, *created])
    assert len(raw) == before + 1 - 1  # one created, one deleted
    with db.transaction() as conn:
        assert conn.root.again.child.payload_of_node == "node value #5"
        assert conn.root.created.payload_of_node == "node value #6"
        assert conn.root.ledger.quartermaster_notes == "revised"
    if kind != "sqlite-history-free":
        ledger = kept[2]
        assert len(db.storage.history(ledger, size=10)) == 1  # the older revision dropped
    raw.close(), other.close(), db.close()


def test_a_writer_committing_throughout_a_pack_loses_nothing(served, keyring):
    """A thread keeps linking new objects into the root while another client packs with
    garbage collection: every object it linked is there after the packs."""
    server, name = served("sqlite")
    db = open_db(server, name, keyring)
    with db.transaction() as conn:
        conn.root.dropped = BlindNode(0, BlindNode(1))
        conn.root.written = PersistentMapping()
    with db.transaction() as conn:
        garbage = conn.root.dropped._p_oid
        del conn.root.dropped
    writer = open_db(server, name, keyring)
    stop = threading.Event()
    linked: list[int] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            while not stop.is_set() or len(linked) < 3:
                number = len(linked) + 10
                with writer.transaction() as conn:
                    conn.root.written[number] = BlindNode(number, BlindNode(-number))
                linked.append(number)
        except BaseException as exc:
            failures.append(exc)
    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(3):
            db.pack()
    finally:
        stop.set()
        thread.join(60)
    assert failures == []
    raw = raw_client(server, name)
    assert not exists(raw, garbage)
    db.storage.sync()
    with db.transaction() as conn:
        assert [conn.root.written[n].child.payload_of_node for n in linked] == \
            [f"node value #{-n}" for n in linked]
    raw.close(), writer.close(), db.close()


# -- conflicts ------------------------------------------------------------------------------

def test_conflicts_are_merged_by_the_clients_not_the_server(served, keyring):
    """Two clients change one BTrees.Length and one Tally at once: the server cannot
    merge sealed records (not even a Length, which it merges for plain clients) and asks
    the committing client, which opens the states, merges and seals the merge."""
    server, name = served("sqlite")
    first, second = open_db(server, name, keyring), open_db(server, name, keyring)
    with first.transaction() as conn:
        conn.root.count, conn.root.tally = Length(0), Tally()
    merges = Tally.merges
    one, two = first.open(transaction.TransactionManager()), \
        second.open(transaction.TransactionManager())
    one.root.count.change(1)
    one.root.tally.total += 5
    two.root.count.change(10)
    two.root.tally.total += 50
    one.transaction_manager.commit()
    two.transaction_manager.commit()
    assert Tally.merges == merges + 1
    one.close(), two.close()
    for db in (first, second):
        db.storage.sync()
        with db.transaction() as conn:
            assert (conn.root.count(), conn.root.tally.total) == (11, 55)
    first.close(), second.close()


class _HoldAfterVote:
    """A second data manager of a transaction: once the connection voted (the server
    holds the storage for it), waits for ``release`` before the commit finishes."""

    def __init__(self, voted: threading.Event, release: threading.Event):
        self.voted, self.release = voted, release
        self.transaction_manager = transaction.manager

    def sortKey(self) -> str:
        return "~after every connection"

    def tpc_begin(self, txn: Any) -> None: ...
    def commit(self, txn: Any) -> None: ...
    def tpc_finish(self, txn: Any) -> None: ...
    def tpc_abort(self, txn: Any) -> None: ...
    def abort(self, txn: Any) -> None: ...

    def tpc_vote(self, txn: Any) -> None:
        self.voted.set()
        assert self.release.wait(30)


def test_a_merge_asked_ahead_of_the_vote_is_made_by_the_client(served, keyring):
    """A commit waits behind another that voted: the server asks its client to merge with
    the voted record before that one is finished (the committed tid unknown yet); the
    client opens the record, merges, and the merge is used at its vote."""
    server, name = served("sqlite")
    first, second = open_db(server, name, keyring), open_db(server, name, keyring)
    with first.transaction() as conn:
        conn.root.tally = Tally()
    merges = Tally.merges
    voted, release = threading.Event(), threading.Event()
    asked_ahead = threading.Event()
    resolve = second.storage._resolve

    def resolve_noting(txn: Any, oid: bytes, committed: Any, *args: Any) -> Any:
        if committed is None:
            asked_ahead.set()
        return resolve(txn, oid, committed, *args)
    second.storage._resolve = resolve_noting
    one = first.open(transaction.TransactionManager())
    two = second.open(transaction.TransactionManager())
    one.root.tally.total += 5
    two.root.tally.total += 50
    one.transaction_manager.get().join(_HoldAfterVote(voted, release))
    failures: list[BaseException] = []

    def commit(manager: transaction.TransactionManager) -> None:
        try:
            manager.commit()
        except BaseException as exc:
            failures.append(exc)
    committing = threading.Thread(target=commit, args=(one.transaction_manager,))
    committing.start()
    assert voted.wait(30)
    waiting = threading.Thread(target=commit, args=(two.transaction_manager,))
    waiting.start()
    assert asked_ahead.wait(30)
    release.set()
    committing.join(30), waiting.join(30)
    assert failures == []
    assert Tally.merges >= merges + 1
    one.close(), two.close()
    for db in (first, second):
        db.storage.sync()
        with db.transaction() as conn:
            assert conn.root.tally.total == 55
    first.close(), second.close()


# -- what the server holds ------------------------------------------------------------------

_CHUNK = 1 << 24


def found_in_memory(pid: int, needles: list[bytes]) -> list[bytes]:
    """The ``needles`` found in the readable memory of process ``pid`` (read through
    ``/proc/PID/mem``, region by region of ``/proc/PID/maps``); skips the test, with the
    reason, when that memory cannot be read."""
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", 0)
    except OSError as exc:
        pytest.skip(f"cannot read the memory of process {pid}: {exc}")
    overlap = max(map(len, needles)) - 1
    found = set()
    with mem:
        for line in maps:
            fields = line.split()
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if not fields[1].startswith("r") or fields[-1] in ("[vvar]", "[vsyscall]"):
                continue
            tail = b""
            for offset in range(start, end, _CHUNK):
                try:
                    mem.seek(offset)
                    chunk = tail + mem.read(min(_CHUNK, end - offset))
                except (OSError, ValueError, OverflowError):
                    break
                found.update(needle for needle in needles if needle in chunk)
                tail = chunk[-overlap:]
    return [needle for needle in needles if needle in found]


def test_the_server_process_never_holds_a_key(served, keyring, tmp_path):
    """After writes, reads, a merged conflict and a pack with gc through it, none of the
    keyring's data keys is anywhere in the server's memory, while the same scan finds a
    sealed record the server served (and, in this process, the keys). The file it wrote
    holds no class name, attribute name or value."""
    server, name = served("sqlite")
    db = open_db(server, name, keyring)
    with db.transaction() as conn:
        conn.root.ledger = ZanzibarLedger()
        conn.root.count = Length(0)
        conn.root.nodes = PersistentMapping({n: BlindNode(n) for n in range(20)})
    one, two = (db.open(transaction.TransactionManager()) for _ in range(2))
    one.root.count.change(1)
    two.root.count.change(2)
    one.transaction_manager.commit(), two.transaction_manager.commit()
    one.close(), two.close()
    with db.transaction() as conn:
        del conn.root.nodes[3]
        ledger = conn.root.ledger._p_oid
    db.pack()
    reader = open_db(server, name, keyring)
    with reader.transaction() as conn:
        assert conn.root.count() == 3
        assert conn.root.ledger.quartermaster_notes == "the launch code is 0451"
    raw = raw_client(server, name)
    sealed = raw.loadBefore(ledger, maxtid)[0]
    keys = [keyring.key(key_id) for key_id in keyring.key_ids]
    assert found_in_memory(server.proc.pid, [*keys, sealed]) == [sealed]
    assert found_in_memory(os.getpid(), keys) == keys
    raw_file = files_of(tmp_path / f"{name}.db")
    assert len(raw_file) > 4096
    assert [secret for secret in SECRETS if secret in raw_file] == []
    raw.close(), reader.close(), db.close()


def postgresql_rows(schema: str) -> bytes:
    """Every row of every table of ``schema``, as PostgreSQL's binary COPY writes them
    (bytes as they are, text in UTF-8)."""
    with pgserver.require().connect() as conn:
        tables = [table for (table,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))]
        assert "objects" in tables and "transactions" in tables
        dump = b""
        for table in tables:
            with conn.cursor().copy(
                    f'COPY "{schema}"."{table}" TO STDOUT (FORMAT binary)') as copy:
                dump += b"".join(bytes(block) for block in copy)
    return dump


def write_secrets(db: amphora.DB) -> None:
    with db.transaction() as conn:
        conn.root.ledger = ZanzibarLedger()
        conn.root.node = BlindNode(7)
    with db.transaction() as conn:
        conn.root.node.child = BlindNode(8)


def test_postgresql_tables_hold_no_class_attribute_or_value(served, keyring, tmp_path):
    server, schema = served("postgresql")
    db = open_db(server, schema, keyring)
    write_secrets(db)
    db.pack()
    with db.transaction() as conn:
        assert conn.root.node.child.payload_of_node == "node value #8"
    db.close()
    dump = postgresql_rows(schema)
    assert len(dump) > 1000
    assert [secret for secret in SECRETS if secret in dump] == []
    # The same objects through the same server, without encryption, show every one.
    plain_schema = pgserver.schema_for(str(tmp_path / "plain"))
    pgserver.require().remember_schema(plain_schema)
    plain = amphora.DB(raw_client(server, plain_schema))
    write_secrets(plain)
    plain.close()
    assert [secret for secret in SECRETS if secret not in postgresql_rows(plain_schema)] == []


# -- the JSON mirror ------------------------------------------------------------------------

def test_the_json_mirror_is_refused_through_the_server(served, keyring):
    server, name = served("sqlite")
    db = open_db(server, name, keyring)
    write_secrets(db)
    assert db.storage.storage.supports_mirror  # the served SQLite file could keep one
    with pytest.raises(amphora.MirrorError, match="plaintext"):
        db.create_mirror()
    db.close()
    keyless = amphora.DB(raw_client(server, name))  # asks the server itself
    with pytest.raises(amphora.MirrorError, match="encrypted .its records are sealed"):
        keyless.create_mirror()
    assert not keyless.storage.has_mirror()
    keyless.close()
