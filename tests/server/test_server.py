"""``amphora serve`` as a real process: authentication, TLS, bad frames, read-only mode,
SIGTERM, kill -9 during commits, and many client processes on one hot spot."""
from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import transaction
from BTrees.Length import Length
from persistent.mapping import PersistentMapping

import amphora
from amphora.errors import ReadOnlyError, StorageError
from amphora.server import protocol as p
from amphora.storage.client import ClientStorage
from amphora.storage.sqlite import SQLiteStorage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import RawClient, hello, raw_connection  # noqa: E402
from clients import stale_counter as stale  # noqa: E402
from counters import Tally  # noqa: E402
from serverprocess import _env  # noqa: E402

WORKER = str(Path(__file__).resolve().parent / "worker_server_client.py")


def read_messages(sock: socket.socket) -> list:
    """Every message the server sends until it closes the connection."""
    decoder = p.FrameDecoder()
    messages = []
    while True:
        data = sock.recv(65536)
        if not data:
            return messages
        messages.extend(decoder.feed(data))


def commit_value(address: str, key: str, value, **options) -> None:
    db = amphora.open(f"amphora://{address}", **options)
    with db.transaction() as conn:
        conn.root()[key] = value
    db.close()


def until_reconnected(action, seconds: float = 60.0):
    """``action()``, tried again while its client is still reconnecting (a
    :class:`StorageError`); fails the test, naming the last error, once ``seconds`` have
    passed without success."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except StorageError as exc:
            if time.monotonic() >= deadline:
                pytest.fail(f"the client did not reconnect within {seconds:g} s: {exc}")
            time.sleep(0.05)


def read_value(address: str, key: str, **options):
    db = amphora.open(f"amphora://{address}", **options)
    with db.transaction() as conn:
        value = conn.root().get(key)
    db.close()
    return value


# -- authentication and the handshake ------------------------------------------------------

def test_a_client_with_the_token_is_served_and_one_without_it_is_refused(servers, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = servers("memory://", "--token-file", str(token))
    commit_value(server.address, "x", 1, token_file=str(token))
    assert read_value(server.address, "x", token="s3cret-token") == 1
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    with pytest.raises(StorageError, match="bad token"):
        ClientStorage(server.host, server.port, token_file=str(wrong), wait_timeout=5)
    with pytest.raises(StorageError, match="bad token"):
        ClientStorage(server.host, server.port, wait_timeout=5)


def test_a_token_of_digits_in_the_uri_stays_a_string(servers, tmp_path):
    token = tmp_path / "token"
    token.write_text("123456\n")
    server = servers("memory://", "--token-file", str(token))
    db = amphora.open(f"amphora://{server.address}?token=123456&wait_timeout=5")
    try:  # the token was read as the number 123456 and refused
        with db.transaction() as conn:
            conn.root.x = 1
    finally:
        db.close()


def test_a_read_only_client_of_an_empty_server_has_an_empty_root(servers):
    server = servers("memory://")
    db = amphora.open(f"amphora://{server.address}?read_only=true&wait_timeout=5")
    try:
        with db.transaction() as conn:  # was: "no object with oid 0x0"
            assert dict(conn.root()) == {}
    finally:
        db.close()
    commit_value(server.address, "x", 1)  # a writer makes the root: the reader sees it
    assert read_value(server.address, "x") == 1


def test_refused_handshakes_leave_no_error_in_the_server_log(servers, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = servers("sqlite:///" + str(tmp_path) + "/{name}.db", "--token-file", str(token))
    with pytest.raises(StorageError, match="bad token"):
        ClientStorage(server.host, server.port, storage="app", token="guess", wait_timeout=5)
    with pytest.raises(StorageError, match="starts with a letter or a digit"):
        ClientStorage(server.host, server.port, storage=".hidden", token="s3cret",
                      wait_timeout=5)
    with raw_connection(server) as sock:
        sock.sendall(hello(version=99))
        assert "version 99" in read_messages(sock)[0][3]
    commit_value(server.address + "/app", "x", 1, token="s3cret")  # still serving
    assert server.terminate() == 0
    log = "".join(server.stderr_lines)
    assert "Traceback" not in log and "never retrieved" not in log, log


def test_another_protocol_version_is_refused_with_the_version_spoken(servers):
    server = servers("memory://")
    with raw_connection(server) as sock:
        sock.sendall(hello(version=99))
        messages = read_messages(sock)
    assert messages[0][0] == p.ERROR
    assert "version 99 is not supported" in messages[0][3]
    assert f"version {p.VERSION}" in messages[0][3]


# -- TLS -----------------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (needed to make a certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_serves_clients_that_trust_the_certificate(servers, certificate):
    cert, key = certificate
    server = servers("memory://", "--tls-cert", str(cert), "--tls-key", str(key))
    db = amphora.open(f"amphoras://{server.address}?ca_file={cert}")
    with db.transaction() as conn:
        conn.root()["secret"] = "over TLS"
    db.close()
    db = amphora.open(f"amphoras://{server.address}?ca_file={cert}")
    with db.transaction() as conn:
        assert conn.root()["secret"] == "over TLS"
    db.close()
    # a client that does not trust it, and one that does not speak TLS, get nowhere
    with pytest.raises(StorageError):
        ClientStorage(server.host, server.port, tls=True, wait_timeout=5)
    with pytest.raises(StorageError, match="the server speaks TLS: connect with amphoras://"):
        ClientStorage(server.host, server.port, wait_timeout=5)


# -- bad frames ----------------------------------------------------------------------------

@pytest.mark.parametrize("frame, says", [
    (p.HEADER.pack(0xFFFFFFF0), "over the limit"),
    (p.HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "not MessagePack"),
    (p.encode(["bogus"]), "hello"),
])
def test_a_bad_frame_closes_only_that_client(servers, frame, says):
    server = servers("memory://")
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["before"] = 1
    with raw_connection(server) as sock:
        sock.sendall(frame)
        messages = read_messages(sock)
    assert messages[-1][0] == p.ERROR and says in messages[-1][3]
    # after the handshake too: an oversized frame, then an unknown request
    for bad in (p.HEADER.pack(p.MAX_FRAME + 1),
                p.encode([p.REQUEST, 1, "format_disk", []])):
        with raw_connection(server) as sock:
            sock.sendall(hello())
            decoder = p.FrameDecoder()
            welcome = []
            while not welcome:
                welcome = decoder.feed(sock.recv(65536))
            assert welcome[0][0] == p.WELCOME
            sock.sendall(bad)
            messages = read_messages(sock)
        assert messages[-1][0] == p.ERROR
    with db.transaction() as conn:  # everyone else is still served
        conn.root()["after"] = conn.root()["before"] + 1
    assert read_value(server.address, "after") == 2
    db.close()


# -- read-only mode --------------------------------------------------------------------------

def test_a_read_only_server_serves_reads_and_refuses_writes(servers, tmp_path):
    path = tmp_path / "data.db"
    db = amphora.DB(SQLiteStorage(str(path)))
    with db.transaction() as conn:
        conn.root()["x"] = "kept"
    db.close()
    server = servers(f"sqlite:///{path}", "--read-only")
    storage = ClientStorage(server.host, server.port)
    assert storage.isReadOnly()
    db = amphora.DB(storage)
    with db.transaction() as conn:
        assert conn.root()["x"] == "kept"
    with pytest.raises(ReadOnlyError):
        with db.transaction() as conn:
            conn.root()["x"] = "changed"
    with pytest.raises(ReadOnlyError):
        storage.new_oid()
    db.close()
    # even a client that ignores what the handshake said is refused
    with raw_connection(server) as sock:
        sock.sendall(hello() + p.encode([p.REQUEST, 1, p.NEW_OIDS, [1]]))
        decoder = p.FrameDecoder()
        messages = []
        while len(messages) < 2:
            data = sock.recv(65536)
            assert data, f"the server closed the connection after {messages}"
            messages.extend(decoder.feed(data))
    assert messages[1][:3] == [p.ERROR, 1, "ReadOnlyError"]
    assert read_value(server.address, "x") == "kept"


# -- stopping and crashing -------------------------------------------------------------------

def test_sigterm_stops_the_server_and_leaves_committed_data_intact(servers, tmp_path):
    path = tmp_path / "data.db"
    server = servers(f"sqlite:///{path}")
    db = amphora.open(f"amphora://{server.address}")
    for i in range(20):
        with db.transaction() as conn:
            conn.root()[i] = i
    assert server.terminate() == 0
    db.close()
    storage = SQLiteStorage(str(path))
    db = amphora.DB(storage)
    with db.transaction() as conn:
        assert [conn.root()[i] for i in range(20)] == list(range(20))
    db.close()


def test_kill_9_during_commits_then_restart(servers, tmp_path):
    """Clients reconnect, every acknowledged commit is there, and no client reads a
    stale object afterwards."""
    path = tmp_path / "data.db"
    server = servers(f"sqlite:///{path}")
    reader = amphora.open(f"amphora://{server.address}", wait_timeout=60)
    with reader.transaction() as conn:
        conn.root()["n"] = 0
    writer = subprocess.Popen([sys.executable, WORKER, "writer", server.address],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env())
    lines: queue.Queue[str] = queue.Queue()  # the writer's, read in a thread: waits end

    def read_lines() -> None:
        for line in writer.stdout:
            lines.put(line)
        lines.put("")  # it exited
    threading.Thread(target=read_lines, daemon=True).start()
    try:
        def acknowledged_until(k: int, seconds: float = 120.0) -> int:
            deadline = time.monotonic() + seconds
            done = 0
            while done < k:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"the writer acknowledged commit {done}, not {k}, within "
                                f"{seconds:g} s")
                if not line:
                    raise AssertionError(f"the writer died: {writer.stderr.read()}")
                done = int(line.split()[1])
            return done
        last = acknowledged_until(30)
        with reader.transaction() as conn:  # the reader caches the root
            assert conn.root()["n"] >= last
        server.kill()
        server.restart()
        last = acknowledged_until(last + 30)  # the writer reconnected and goes on
        def read_n() -> int:
            with reader.transaction() as conn:
                return conn.root()["n"]
        seen = until_reconnected(read_n)
        assert seen >= last, "the reader saw a stale root after the restart"
    finally:
        writer.kill()
        writer.wait(30)
    with reader.transaction() as conn:
        root = conn.root()
        assert all(root[k] == k for k in range(1, last + 1))
        final = root["n"]
    reader.close()
    server.terminate()
    db = amphora.DB(SQLiteStorage(str(path)))
    with db.transaction() as conn:
        assert conn.root()["n"] == final
        assert all(conn.root()[k] == k for k in range(1, final + 1))
    db.close()


def test_a_commit_made_while_a_client_was_away_is_read_after_it_reconnects(servers, tmp_path):
    """On reconnecting, the server tells the client what was committed while it was away,
    and the client invalidates exactly those objects: an object it had cached and that
    changed meanwhile is read anew though no later commit announces it; one that did not
    change stays loaded."""
    path = tmp_path / "data.db"
    server = servers(f"sqlite:///{path}")
    db = amphora.open(f"amphora://{server.address}", wait_timeout=60)
    with db.transaction() as conn:
        conn.root()["changed"] = PersistentMapping(k=1)
        conn.root()["kept"] = PersistentMapping(k=1)
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    changed, kept = conn.root()["changed"], conn.root()["kept"]
    assert changed["k"] == kept["k"] == 1  # both cached in the connection
    manager.abort()
    server.kill()
    direct = amphora.DB(SQLiteStorage(str(path)))  # the file, while no server serves it
    with direct.transaction() as other:
        other.root()["changed"]["k"] = 2
    direct.close()
    server.restart()
    until_reconnected(db.storage.sync)
    manager.begin()
    assert changed["k"] == 2, "the commit made while away was not invalidated"
    assert kept._p_changed is False, "an object not changed while away stays loaded"
    manager.abort()
    conn.close()
    db.close()


# -- a hot spot ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [Length, Tally], ids=["merged-by-server", "by-clients"])
def test_eight_processes_incrementing_one_counter_end_with_the_exact_count(servers, kind):
    server = servers("memory://")
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["counter"] = kind()
    workers = [subprocess.Popen([sys.executable, WORKER, "counter", server.address, "25"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
               for _ in range(8)]
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0 and out.strip() == "done", err
    with db.transaction() as conn:
        assert conn.root()["counter"]() == 8 * 25
    db.close()


# -- conflicts resolved during the vote ------------------------------------------------------

def counter_value(address: str) -> int:
    db = amphora.open(f"amphora://{address}")
    with db.transaction() as conn:
        value = conn.root()["counter"]()
    db.close()
    return value


@pytest.fixture
def stale_counter(servers, tmp_path):
    """A served Tally (merged by the client) at 5, and the state a late writer read
    (at 1)."""
    server = servers(f"sqlite:///{tmp_path / 'data.db'}")
    db, oid, committed, read = stale(server, Tally)
    yield server, db, oid, committed, read
    db.close()


def test_a_write_conflict_is_sent_to_the_client_while_the_vote_waits(stale_counter):
    """One commit request: the server asks the client to merge (sending both states) and
    commits what the client answers, without unpickling anything."""
    server, db, oid, committed, read = stale_counter
    client = RawClient(server)
    mine = db.storage.loadSerial(oid, read).replace(b"K\x01", b"K\x03")  # 1 -> 3: +2
    commit = client.request(p.COMMIT, [b"", b"", b""], None, {oid: mine}, {oid: read}, {})
    asked = client.next()
    assert asked == [p.RESOLVE, commit, oid, committed, read,
                     db.storage.loadSerial(oid, committed), db.storage.loadSerial(oid, read)]
    merged = asked[5].replace(b"K\x05", b"K\x07")  # what _p_resolveConflict gives: 5 + 2
    client.sock.sendall(p.encode([p.RESOLVED, commit, merged]))
    assert client.next() == [p.REPLY, commit, None]
    finish = client.request(p.FINISH)
    reply = client.next()
    assert reply[:2] == [p.REPLY, finish] and reply[2] > committed
    client.close()
    assert counter_value(server.address) == 7


def test_a_conflict_the_client_cannot_merge_fails_the_commit_and_frees_the_lock(stale_counter):
    server, db, oid, committed, read = stale_counter
    client = RawClient(server)
    commit = client.request(p.COMMIT, [b"", b"", b""], None, {oid: b"mine"}, {oid: read}, {})
    assert client.next()[:2] == [p.RESOLVE, commit]
    client.sock.sendall(p.encode([p.RESOLVED, commit, None]))
    error = client.next()
    assert error[:3] == [p.ERROR, commit, "ConflictError"]
    assert error[4] == {"oid": oid, "serials": [committed, read]}
    client.close()
    with db.transaction() as conn:  # nothing holds the commit lock
        conn.root()["counter"].change(1)
    assert counter_value(server.address) == 6


def test_a_client_that_leaves_while_asked_to_merge_has_its_commit_aborted(stale_counter):
    server, db, oid, committed, read = stale_counter
    client = RawClient(server)
    commit = client.request(p.COMMIT, [b"", b"", b""], None, {oid: b"mine"}, {oid: read}, {})
    assert client.next()[:2] == [p.RESOLVE, commit]
    client.close()
    with db.transaction() as conn:  # waits for the lock, which the abort releases
        conn.root()["counter"].change(1)
    assert counter_value(server.address) == 6


def test_a_stale_client_merges_in_one_commit_request(stale_counter):
    """Through the client storage: a conflict on a Length costs no retry and no
    loadSerial; the application never sees it."""
    server, db, oid, committed, read = stale_counter
    other = amphora.open(f"amphora://{server.address}")
    sent: list[str] = []
    storage = other.storage
    call = storage._call
    storage._call = lambda method, *args, **kwargs: (sent.append(method),
                                                     call(method, *args, **kwargs))[1]
    conn = other.open()
    counter = conn.root()["counter"]
    assert counter() == 5
    with db.transaction() as mine:  # committed after `other` read the counter
        mine.root()["counter"].change(10)
    sent.clear()
    counter.change(100)
    conn.transaction_manager.commit()
    assert sent.count(p.COMMIT) == 1 and p.LOAD_SERIAL not in sent
    conn.close()
    other.close()
    assert counter_value(server.address) == 115


# -- cold reads -------------------------------------------------------------------------------

def test_a_cold_walk_of_a_tree_of_a_thousand_objects_takes_one_read_round_trip(servers,
                                                                              monkeypatch):
    """The first load (the root's, when the database opens) brings the records the root
    refers to, and theirs (breadth first, up to 2000); the connection's batched loads of
    the tree's objects are answered from them, exactly as the server would answer."""
    from BTrees.OOBTree import OOBTree
    server = servers("memory://")
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["tree"] = tree = OOBTree()
        for i in range(1000):
            tree[f"k{i:04d}"] = PersistentMapping(n=i)
    db.close()
    sent: list[str] = []
    call = ClientStorage._call
    monkeypatch.setattr(ClientStorage, "_call", lambda self, method, *args, **kwargs: (
        sent.append(method), call(self, method, *args, **kwargs))[1])
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        assert sum(item["n"] for item in conn.root()["tree"].values()) == sum(range(1000))
    db.close()
    reads = [method for method in sent if method not in (p.SYNC, p.LAST_TRANSACTION)]
    assert reads == [p.LOAD_AHEAD]


REMOTE_LIKE = [sys.executable, str(Path(__file__).resolve().parent / "serve_as_remote.py")]


@pytest.mark.parametrize("program", [None, REMOTE_LIKE], ids=["in-loop", "threads"])
def test_conflicts_merged_during_the_vote_with_commits_in_the_loop_or_in_threads(
        servers, program):
    """Both ways a server commits (in its event loop for a storage in the process, in
    threads for a remote one): a stale writer's conflict is merged in its one commit
    request, and a client that leaves while asked has its commit aborted."""
    server = servers("memory://", program=program)
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["counter"] = counter = Tally(1)
    oid, read = counter._p_oid, counter._p_serial
    with db.transaction() as conn:
        conn.root()["counter"].change(4)
    leaving = RawClient(server)
    commit = leaving.request(p.COMMIT, [b"", b"", b""], None, {oid: b"x"}, {oid: read}, {})
    assert leaving.next()[:2] == [p.RESOLVE, commit]
    leaving.close()
    other = amphora.open(f"amphora://{server.address}")
    conn = other.open()
    stale = conn.root()["counter"]
    stale()
    with db.transaction() as mine:  # after `other` read it
        mine.root()["counter"].change(10)
    stale.change(100)
    conn.transaction_manager.commit()
    conn.close()
    other.close()
    db.close()
    assert counter_value(server.address) == 115


def test_the_next_commit_is_asked_to_merge_while_the_voted_one_finishes(stale_counter):
    """While commit A, voted, waits for its client's FINISH, the server asks the client
    of the commit queued next (B) to merge with A's record (``committed_serial`` null);
    once A finished, B's vote uses that merge: no question while B holds the lock."""
    server, db, oid, committed, read = stale_counter
    five = db.storage.loadSerial(oid, committed)
    a, b = RawClient(server), RawClient(server)
    commit_a = a.request(p.COMMIT, [b"", b"", b""], None, {oid: five.replace(b"K\x05", b"K\x06")},
                         {oid: committed}, {})
    assert a.next() == [p.REPLY, commit_a, None]  # voted: A holds the storage
    mine = five.replace(b"K\x05", b"K\x07")
    commit_b = b.request(p.COMMIT, [b"", b"", b""], None, {oid: mine}, {oid: committed}, {})
    assert b.next() == [p.RESOLVE, commit_b, oid, None, committed,
                        five.replace(b"K\x05", b"K\x06"), five]
    b.sock.sendall(p.encode([p.RESOLVED, commit_b, five.replace(b"K\x05", b"K\x08")]))
    finish_a = a.request(p.FINISH)
    assert a.next()[:2] == [p.REPLY, finish_a]
    assert b.next() == [p.REPLY, commit_b, None]  # voted with the merge, nothing asked
    finish_b = b.request(p.FINISH)
    assert b.next()[:2] == [p.REPLY, finish_b]
    a.close()
    b.close()
    assert counter_value(server.address) == 8


def test_a_merge_asked_ahead_is_unused_when_that_commit_does_not_happen(stale_counter):
    server, db, oid, committed, read = stale_counter
    five = db.storage.loadSerial(oid, committed)
    a, b = RawClient(server), RawClient(server)
    commit_a = a.request(p.COMMIT, [b"", b"", b""], None, {oid: five.replace(b"K\x05", b"K\x06")},
                         {oid: committed}, {})
    assert a.next() == [p.REPLY, commit_a, None]
    commit_b = b.request(p.COMMIT, [b"", b"", b""], None, {oid: five.replace(b"K\x05", b"K\x07")},
                         {oid: committed}, {})
    assert b.next()[:4] == [p.RESOLVE, commit_b, oid, None]
    b.sock.sendall(p.encode([p.RESOLVED, commit_b, five.replace(b"K\x05", b"K\x08")]))
    abort_a = a.request(p.ABORT)
    assert a.next() == [p.REPLY, abort_a, None]
    assert b.next() == [p.REPLY, commit_b, None]  # no conflict left: B's own record
    finish_b = b.request(p.FINISH)
    assert b.next()[:2] == [p.REPLY, finish_b]
    a.close()
    b.close()
    assert counter_value(server.address) == 7
