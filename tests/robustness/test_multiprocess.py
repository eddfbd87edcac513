"""Several real processes on one SQLite file: a hot-spot counter, conflict resolution,
MVCC monotonic reads and invalidations across processes.

Every writer and reader is a separate ``python`` process (``subprocess``, not fork).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transaction
from BTrees.Length import Length
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

sys.path.insert(0, str(Path(__file__).resolve().parent))

import amphora  # noqa: E402
from robustness_support import Counter, Item, run, spawn, sqlite_uri  # noqa: E402

N_PROCESSES = 4
N_TXNS = 50


def _setup(uri: str, counter) -> None:
    db = amphora.open(uri)
    try:
        with db.transaction() as conn:
            root = conn.root()
            root["counter"] = counter
            root["lists"] = PersistentMapping(
                {w: PersistentList() for w in range(N_PROCESSES)})
    finally:
        db.close()


def _wait_ready(procs) -> None:
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"helper did not start: {line!r}{out}\nstderr:\n{err}")


def _finish(procs, timeout: float = 240) -> list[dict]:
    results = []
    failures = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except Exception:
            proc.kill()
            out, err = proc.communicate()
            failures.append(f"helper hung\nstdout:\n{out}\nstderr:\n{err}")
            continue
        if proc.returncode != 0:
            failures.append(f"helper exited with {proc.returncode}\nstdout:\n{out}\n"
                            f"stderr:\n{err}")
            continue
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert not failures, "\n\n".join(failures)
    return results


def _hot_spot(tmp_path: Path, mode: str, counter, with_reader: bool = False):
    path = tmp_path / "hot.db"
    uri = sqlite_uri(path)
    _setup(uri, counter)
    go = tmp_path / "go"
    procs = [spawn("worker_counter.py", uri, w, N_TXNS, mode, go) for w in range(N_PROCESSES)]
    reader = None
    try:
        if with_reader:
            reader = spawn("worker_reader.py", uri, N_PROCESSES * N_TXNS, go)
        _wait_ready(procs + ([reader] if reader else []))
        go.touch()
        results = _finish(procs)
        reader_result = _finish([reader])[0] if reader else None
    finally:
        for proc in procs + ([reader] if reader else []):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # read everything back through a fresh database object
    db = amphora.open(uri)
    try:
        with db.transaction() as conn:
            root = conn.root()
            counter = root["counter"]
            value = counter() if isinstance(counter, Length) else counter.value
            lists = {w: list(lst) for w, lst in root["lists"].items()}
    finally:
        db.close()
    assert value == N_PROCESSES * N_TXNS, (value, results)
    assert sorted(lists) == list(range(N_PROCESSES))
    for w, entries in lists.items():
        assert entries == list(range(N_TXNS)), f"worker {w}'s list: {entries}"
    return results, reader_result


@pytest.mark.timeout(300)
def test_hot_spot_counter_with_retries(tmp_path):
    """4 processes x 50 transactions on one plain counter: conflicts are retried with
    ``transaction_manager.attempts()``, and no increment is lost or doubled."""
    results, _ = _hot_spot(tmp_path, "plain", Counter(0))
    assert sum(r["done"] for r in results) == N_PROCESSES * N_TXNS
    print(f"hot spot: {sum(r['conflicts'] for r in results)} conflicts retried")


@pytest.mark.timeout(300)
def test_hot_spot_length_resolves_conflicts(tmp_path):
    """The same with a BTrees.Length counter: its conflict resolution merges concurrent
    increments from different processes, so no ConflictError reaches the application."""
    results, _ = _hot_spot(tmp_path, "length", Length(0))
    conflicts = sum(r["conflicts"] for r in results)
    assert conflicts == 0, (
        f"{conflicts} ConflictErrors reached the application although the only shared "
        f"object is a BTrees.Length (per-process lists are never shared): {results}")


@pytest.mark.timeout(300)
def test_reader_process_sees_monotonic_consistent_snapshots(tmp_path):
    """A fifth process reads while 4 write: the counter never goes back, and each
    snapshot is consistent (counter == total entries in the writers' lists)."""
    _results, reader = _hot_spot(tmp_path, "plain", Counter(0), with_reader=True)
    assert reader["violations"] == [], reader
    assert reader["last"] == N_PROCESSES * N_TXNS
    assert reader["observations"] >= 1
    print(f"reader: {reader}")


@pytest.mark.timeout(120)
def test_invalidation_from_another_process(tmp_path):
    """Process A (this one) caches objects; process B changes them. Within A's current
    transaction A keeps its snapshot (also for objects it had not loaded yet); at its
    next transaction boundary A sees B's values, not stale cached ones."""
    uri = sqlite_uri(tmp_path / "inv.db")
    db = amphora.open(uri)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        tm.begin()
        root = conn.root()
        root["x"] = Item(1)
        root["y"] = Item(1)
        tm.commit()

        # A: a transaction that has x loaded (cached) and y still a ghost
        tm.begin()
        conn.cacheMinimize()
        assert conn.root()["x"].value == 1
        y = conn.root()["y"]
        assert y._p_changed is None, "y should still be a ghost"

        run("worker_change.py", uri, "x=2", "y=2")

        # still inside A's transaction: the snapshot holds, for cached and unloaded objects
        assert conn.root()["x"].value == 1
        assert y.value == 1, "an object loaded after B's commit must come from A's snapshot"
        tm.abort()

        # the next transaction boundary brings B's changes
        tm.begin()
        assert conn.root()["x"].value == 2, "stale cached object after a transaction boundary"
        assert conn.root()["y"].value == 2
        tm.abort()

        # and again, with only the next boundary (no cache minimization in between)
        run("worker_change.py", uri, "x=3")
        tm.begin()
        assert conn.root()["x"].value == 3
        assert conn.root()["y"].value == 2
        tm.abort()
        conn.close()
    finally:
        db.close()


@pytest.mark.timeout(120)
def test_write_conflict_across_processes(tmp_path):
    """A changes an object that B changed and committed after A's snapshot began: A's
    commit raises ConflictError (nothing is overwritten), and a retry sees B's value."""
    uri = sqlite_uri(tmp_path / "conflict.db")
    db = amphora.open(uri)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        tm.begin()
        conn.root()["x"] = Item(1)
        tm.commit()

        tm.begin()
        x = conn.root()["x"]
        assert x.value == 1
        run("worker_change.py", uri, "x=10")
        x.value = 2
        with pytest.raises(amphora.ConflictError) as info:
            tm.commit()
        assert info.value.oid == x._p_oid
        tm.abort()

        tm.begin()
        x = conn.root()["x"]
        assert x.value == 10, "B's committed value must win, not A's rejected one"
        x.value += 1
        tm.commit()
        conn.close()
    finally:
        db.close()
    db = amphora.open(uri)
    try:
        with db.transaction() as conn:
            assert conn.root()["x"].value == 11
    finally:
        db.close()
