"""A database opened before a fork works in the children (``gunicorn --preload``,
``multiprocessing`` with ``fork``, celery's prefork pool), and in the parent afterwards.

Every storage kind that processes share (SQLite, PostgreSQL, the client of a real
``amphora serve`` process over SQLite): four forked children add 50 each to one counter
(no conflict resolution: conflicts are retried), and the count is exactly 200; the
parent, which used the database before the fork, commits and reads afterwards; children
that open a database of their own after the fork work too. A memory storage is copied by
the fork: each child works on its own copy, and the parent's is untouched.

The fork start method is asked for explicitly (Python 3.14 no longer defaults to it on
Linux). Children are joined with a timeout and killed if they hang: a regression fails,
it does not hang the suite.
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

import amphora  # noqa: E402
import pgserver  # noqa: E402
from robustness_support import HERE, Counter, child_env  # noqa: E402
from serverprocess import ServerProcess  # noqa: E402

CHILDREN = 4
INCREMENTS = 50
JOIN_TIMEOUT = 120  # seconds all children of one test may take together
ATTEMPTS = 1000     # transaction attempts per increment before a child gives up
SHARED_KINDS = ["sqlite", "postgresql", "client"]

_fork = multiprocessing.get_context("fork")
# Python 3.12+ warns at each fork of a process with threads: forking one is the point here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")


# -- the database of each kind --------------------------------------------------------
@pytest.fixture
def shared_uri(request, tmp_path) -> Iterator[str]:
    """The URI of a fresh database of kind ``request.param`` that processes share."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
    elif kind == "postgresql":
        server = pgserver.require()
        schema = pgserver.schema_for(str(tmp_path / "shared"))
        server.remember_schema(schema)
        yield server.uri(schema=schema)
    else:
        served = ServerProcess(f"sqlite:///{tmp_path / 'served.db'}")
        try:
            yield f"amphora://{served.address}"
        finally:
            served.stop()


# -- what the processes do ------------------------------------------------------------
def increment(db: amphora.DB, times: int) -> None:
    """Add one to ``root["counter"]`` ``times`` times, each in a transaction retried on
    conflicts."""
    for _ in range(times):
        for _attempt in range(ATTEMPTS):
            try:
                with db.transaction() as conn:
                    conn.root()["counter"].value += 1
                break
            except amphora.ConflictError:
                continue
        else:
            raise AssertionError(f"still conflicting after {ATTEMPTS} attempts")


def count(db: amphora.DB) -> int:
    with db.transaction() as conn:
        return conn.root()["counter"].value


def start_counter(db: amphora.DB, value: int = 0) -> None:
    with db.transaction() as conn:
        conn.root()["counter"] = Counter(value)


def increment_own(uri: str, times: int) -> None:
    """In a child: open the database (after the fork), increment, close."""
    db = amphora.open(uri)
    try:
        increment(db, times)
    finally:
        db.close()


def in_children(tmp_path: Path, *jobs: tuple[Callable, ...]) -> None:
    """Run each ``(function, *args)`` of ``jobs`` in a forked child at once; fail with
    the children's tracebacks if any raised, and kill those that did not end in time."""
    def run(index: int, function: Callable, args: tuple) -> None:
        try:
            function(*args)
        except BaseException:
            (tmp_path / f"child-{index}.err").write_text(traceback.format_exc())
            os._exit(1)

    children = [_fork.Process(target=run, args=(index, job[0], job[1:]), daemon=True)
                for index, job in enumerate(jobs)]
    for child in children:
        child.start()
    deadline = threading.Event()
    timer = threading.Timer(JOIN_TIMEOUT, deadline.set)
    timer.start()
    failures = []
    try:
        for index, child in enumerate(children):
            while child.is_alive() and not deadline.is_set():
                child.join(1)
            if child.is_alive():
                child.kill()
                child.join(10)
                failures.append(f"child {index} still running after {JOIN_TIMEOUT} s: killed")
            elif child.exitcode != 0:
                err = tmp_path / f"child-{index}.err"
                failures.append(f"child {index} exited with {child.exitcode}:\n"
                                f"{err.read_text() if err.exists() else ''}")
    finally:
        timer.cancel()
    assert not failures, "\n".join(failures)


# -- shared storages --------------------------------------------------------------------
@pytest.mark.parametrize("shared_uri", SHARED_KINDS, indirect=True)
def test_children_use_the_database_opened_before_the_fork(shared_uri, tmp_path):
    db = amphora.open(shared_uri)
    try:
        start_counter(db)
        assert count(db) == 0  # the parent used its connections, sessions, caches
        in_children(tmp_path, *[(increment, db, INCREMENTS)] * CHILDREN)
        assert count(db) == CHILDREN * INCREMENTS
        increment(db, 1)  # the parent keeps working: it commits ...
        assert count(db) == CHILDREN * INCREMENTS + 1  # ... and reads
    finally:
        db.close()
    reopened = amphora.open(shared_uri)
    try:
        assert count(reopened) == CHILDREN * INCREMENTS + 1
    finally:
        reopened.close()


@pytest.mark.parametrize("shared_uri", SHARED_KINDS, indirect=True)
def test_children_open_a_database_of_their_own(shared_uri, tmp_path):
    db = amphora.open(shared_uri)
    try:
        start_counter(db)
        assert count(db) == 0
        in_children(tmp_path, *[(increment_own, shared_uri, INCREMENTS)] * CHILDREN)
        assert count(db) == CHILDREN * INCREMENTS
        increment(db, 1)
        assert count(db) == CHILDREN * INCREMENTS + 1
    finally:
        db.close()


def test_client_closed_before_the_fork_opens_in_the_child(tmp_path):
    """The issue's reproduction: a process that opened and closed a client storage
    forks; the child's ``amphora.open`` used to wait forever on the parent's I/O loop."""
    served = ServerProcess(f"sqlite:///{tmp_path / 'served.db'}")
    try:
        uri = f"amphora://{served.address}"
        db = amphora.open(uri)
        start_counter(db)
        db.close()
        in_children(tmp_path, (increment_own, uri, 1))
        db = amphora.open(uri)
        try:
            assert count(db) == 1
        finally:
            db.close()
    finally:
        served.stop()


def hold_locks(locks: list[Any], held: threading.Event, release: threading.Event) -> None:
    for lock in locks:
        lock.acquire()
    held.set()
    release.wait()
    for lock in reversed(locks):
        lock.release()


@pytest.mark.parametrize("shared_uri", SHARED_KINDS, indirect=True)
def test_fork_while_another_thread_holds_the_locks(shared_uri, tmp_path):
    """A thread of the parent is inside the database's bookkeeping when the parent forks
    (as a client's I/O thread is while it reports a commit), or in the middle of a
    commit: that thread does not exist in the child, and the locks it held must not stop
    the child."""
    db = amphora.open(shared_uri)
    try:
        start_counter(db)
        conn = db.open()  # a pooled connection whose invalidation lock is held
        conn.close()
        locks = [db._lock, db.records._lock, conn._inv_lock, db.storage._commit_lock]
        held, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_locks, args=(locks, held, release))
        holder.start()
        try:
            assert held.wait(30)
            in_children(tmp_path, (increment, db, INCREMENTS))
        finally:
            release.set()
            holder.join()
        assert count(db) == INCREMENTS
    finally:
        db.close()


def subscribe_in_child(db: amphora.DB, parent_seen: list) -> None:
    """In a child: a subscription of the child's gets the child's commit, the parent's
    callbacks are not called here, and ``db.changes`` reads the commit too."""
    before = db.last_transaction()
    seen_before = len(parent_seen)
    got: list[amphora.Change] = []
    arrived = threading.Event()

    def callback(change: amphora.Change) -> None:
        got.append(change)
        arrived.set()
    db.subscribe(callback)
    increment(db, 1)
    assert arrived.wait(60), "the child's subscription got nothing"
    tid = db.last_transaction()
    assert [change.tid for change in got] == [tid]
    assert [change.tid for change in db.changes(since=before, timeout=5)] == [tid]
    assert len(parent_seen) == seen_before, "the parent's callback ran in the child"


@pytest.mark.parametrize("shared_uri", SHARED_KINDS, indirect=True)
def test_change_feeds_in_the_child(shared_uri, tmp_path):
    db = amphora.open(shared_uri)
    try:
        start_counter(db)
        parent_seen: list[amphora.Change] = []
        arrived = threading.Event()

        def callback(change: amphora.Change) -> None:
            parent_seen.append(change)
            arrived.set()
        db.subscribe(callback)  # the parent's subscription thread runs at the fork
        in_children(tmp_path, (subscribe_in_child, db, parent_seen))
        assert arrived.wait(60), "the parent's subscription missed the child's commit"
        assert count(db) == 1  # (a transaction start: the parent learns of the commit)
        assert parent_seen[-1].tid == db.last_transaction()
    finally:
        db.close()


# -- memory ---------------------------------------------------------------------------
def increment_copy(db: amphora.DB, times: int, start: int) -> None:
    increment(db, times)
    assert count(db) == start + times  # its own copy: no other child's increments


def test_a_fork_waits_for_a_background_threads_database_call(tmp_path):
    """amphora's background threads (the change feed's) do their database work inside
    ``_fork.quiet()``: a fork made meanwhile waits until it ends. (SQLite allocates
    under a process-wide mutex; a child forked while another thread held it hung at its
    first SQLite call, about one fork in a hundred with a subscription running.)"""
    from amphora.storage import _fork
    inside, finished = threading.Event(), tmp_path / "finished"

    def call() -> None:
        with _fork.quiet():
            inside.set()
            time.sleep(0.5)
            finished.write_text("the call ended")
    thread = threading.Thread(target=call)
    thread.start()
    inside.wait(10)
    child = _forked_check(finished)
    thread.join(10)
    assert child == 0, "the child was forked while the call was under way"


def _forked_check(finished: Path) -> int:
    """Fork; the child exits 0 if ``finished`` exists (else 3). The child's exit status."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if finished.exists() else 3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_memory_children_work_on_their_copies(tmp_path):
    db = amphora.open("memory://")
    try:
        start_counter(db)
        increment(db, 1)
        in_children(tmp_path, *[(increment_copy, db, INCREMENTS, 1)] * CHILDREN)
        assert count(db) == 1  # the parent's storage is its own
        increment(db, 1)
        assert count(db) == 2
    finally:
        db.close()


# -- a pre-forking web server -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(port: int, method: str, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return json.loads(body)
    finally:
        connection.close()


def _wait_until_serving(gunicorn: subprocess.Popen, port: int) -> None:
    for _ in range(600):
        if gunicorn.poll() is not None:
            raise AssertionError(f"gunicorn exited with {gunicorn.returncode}:\n"
                                 f"{gunicorn.stderr.read()}")
        try:
            _request(port, "GET", "/count")
            return
        except (OSError, http.client.HTTPException):
            threading.Event().wait(0.1)
    raise AssertionError("gunicorn did not answer within a minute")


@pytest.mark.parametrize("shared_uri", SHARED_KINDS, indirect=True)
def test_gunicorn_preload_workers_share_the_database(shared_uri, tmp_path):
    """``gunicorn --preload`` with two sync workers: the application opened the database
    in the arbiter; four threads send 50 increments each, and the count is exact."""
    port = _free_port()
    env = {**child_env(), "AMPHORA_FORK_APP_URI": shared_uri}
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2",
         "--worker-class", "sync", "--bind", f"127.0.0.1:{port}", "--chdir", str(HERE),
         "--graceful-timeout", "10", "fork_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_serving(gunicorn, port)
        pids: set[int] = set()
        errors: list[str] = []

        def client() -> None:
            try:
                for _ in range(INCREMENTS):
                    pids.add(_request(port, "POST", "/increment")["pid"])
            except Exception as exc:  # reported below, with the server's log
                errors.append(repr(exc))
        threads = [threading.Thread(target=client) for _ in range(CHILDREN)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        assert not any(thread.is_alive() for thread in threads), "requests hung"
        assert not errors, errors
        assert _request(port, "GET", "/count")["count"] == CHILDREN * INCREMENTS
        assert len(pids) == 2, f"not both workers answered: {pids}"
    finally:
        if gunicorn.poll() is None:
            gunicorn.send_signal(signal.SIGTERM)
            try:
                gunicorn.wait(30)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
                gunicorn.wait(30)
        gunicorn.stderr.close()
