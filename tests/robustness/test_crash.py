"""Crash safety: a writer process is killed with SIGKILL at random moments.

After every kill the file must open, every transaction the writer reported committed
must be there, and no transaction may be partial. The random seed is fixed (override
with AMPHORA_CRASH_SEED) and printed in every failure message.
"""
from __future__ import annotations

import collections
import hashlib
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from BTrees.check import check as check_btree

sys.path.insert(0, str(Path(__file__).resolve().parent))

import amphora  # noqa: E402
from amphora.serialize import ObjectReader, class_name_of  # noqa: E402
from amphora.utils import z64  # noqa: E402
from robustness_support import spawn, sqlite_uri  # noqa: E402

SEED = int(os.environ.get("AMPHORA_CRASH_SEED", "20240611"))
COMMITTED = re.compile(r"^COMMITTED (\d+)$")
MODULE = "robustness_support"


class Writer:
    """A running worker_crash_writer.py whose stdout is collected by a thread."""

    def __init__(self, uri: str, *args):
        self.proc = spawn("worker_crash_writer.py", uri, *args)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line == "READY":
                self.ready.set()
        self.ready.set()  # EOF: stop waiting

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        self._thread.join(timeout=60)
        return code

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=60)
        return code

    @property
    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr else ""

    def committed(self) -> list[int]:
        return [int(m.group(1)) for m in map(COMMITTED.match, self.lines) if m]


def check_database(uri: str, reported: set[int], ctx: str) -> int:
    """Open the file with the public API and check every invariant; returns the count."""
    db = amphora.open(uri)
    try:
        with db.transaction() as conn:
            root = conn.root()
            if "data" not in root:
                assert not reported, f"{ctx}: reported commits {sorted(reported)[:5]}... lost"
                assert "count" not in root and "stats" not in root, \
                    f"{ctx}: the setup transaction is partial: {dict(root)}"
                return 0
            count = root["count"]
            n_parts = root["parts"]
            data = root["data"]
            stats = root["stats"]
            check_btree(data)  # BTree structure intact
            keys = list(data.keys())
            assert keys == list(range(count)), (
                f"{ctx}: count is {count} but the records are {keys[:3]}...{keys[-3:]} "
                f"({len(keys)} of them): a partial transaction")
            missing = sorted(i for i in reported if i >= count)
            assert not missing, f"{ctx}: transactions reported committed are lost: {missing}"
            assert stats.last_txn == count - 1, f"{ctx}: stats.last_txn {stats.last_txn}, count {count}"
            assert stats.total == count * (count - 1) // 2, f"{ctx}: stats.total {stats.total}"
            for i, record in data.items():
                assert record.txn == i, f"{ctx}: data[{i}].txn == {record.txn}"
                assert hashlib.sha256(record.payload).hexdigest() == record.digest, \
                    f"{ctx}: data[{i}].payload does not match its digest"
                assert [(p.txn, p.index) for p in record.parts] == \
                    [(i, j) for j in range(n_parts)], f"{ctx}: data[{i}].parts are partial"
            return count
    finally:
        db.close()


def _class(data: bytes) -> str:
    name = class_name_of(data)
    return name.rsplit(".", 1)[-1] if name.startswith(MODULE + ".") else name


def check_storage(uri: str, count: int, ctx: str) -> None:
    """Storage level: every transaction the iterator yields is whole."""
    reader = ObjectReader(lambda oid, klass: oid, lambda oid: oid)
    storage = amphora.open_storage(uri)
    try:
        seen = collections.Counter()
        n_parts = None
        for txn in storage.iterator():
            records = list(txn)
            oids = [r.oid for r in records]
            assert len(oids) == len(set(oids)), f"{ctx}: an oid twice in txn {txn.tid.hex()}"
            for r in records:
                assert isinstance(r.data, bytes) and r.data, \
                    f"{ctx}: empty record {r.oid.hex()} in txn {txn.tid.hex()}"
            description = txn.description.decode() if isinstance(txn.description, bytes) \
                else txn.description
            if description == "setup":
                for r in records:
                    if r.oid == z64:
                        n_parts = reader.get_state(r.data)["data"]["parts"]
            m = re.fullmatch(r"txn (\d+)", description)
            if not m:
                continue
            i = int(m.group(1))
            seen[i] += 1
            classes = collections.Counter(_class(r.data) for r in records)
            where = f"{ctx}: transaction 'txn {i}' ({txn.tid.hex()})"
            assert z64 in oids, f"{where} lacks the root: {classes}"
            assert classes["Record"] == 1 and classes["Stats"] == 1, f"{where}: {classes}"
            assert n_parts is not None and classes["Part"] == n_parts, f"{where}: {classes}"
            for r in records:
                kind = _class(r.data)
                if kind in ("Record", "Part"):
                    assert reader.get_state(r.data)["txn"] == i, f"{where}: a {kind} of another txn"
                elif kind == "Stats":
                    assert reader.get_state(r.data)["last_txn"] == i, f"{where}: stale Stats"
                elif r.oid == z64:
                    assert reader.get_state(r.data)["data"]["count"] == i + 1, f"{where}: root"
        assert sorted(seen) == list(range(count)), (
            f"{ctx}: the iterator has transactions {sorted(seen)[:5]}... "
            f"({len(seen)}), the database count is {count}")
        twice = [i for i, n in seen.items() if n > 1]
        assert not twice, f"{ctx}: transactions recorded twice: {twice}"
    finally:
        storage.close()


def _crash_rounds(tmp_path: Path, kills: int, parts: int, max_delay: float) -> None:
    rng = random.Random(SEED)
    uri = sqlite_uri(tmp_path / "crash.db")
    reported: set[int] = set()
    log = []
    t0 = time.monotonic()
    count = 0
    for round_no in range(kills + 1):
        ctx = f"seed={SEED} (AMPHORA_CRASH_SEED), parts={parts}, round {round_no}, log {log}"
        writer = Writer(uri, "-", parts)
        if round_no == 0:
            # measured from the start: may hit interpreter start-up, schema creation,
            # root creation or the setup transaction
            delay = rng.uniform(0.05, 0.5)
            time.sleep(delay)
        else:
            assert writer.ready.wait(120), f"{ctx}: the writer did not start"
            delay = rng.uniform(0.05, max_delay)
            time.sleep(delay)
        if writer.proc.poll() is not None:
            raise AssertionError(f"{ctx}: the writer exited by itself with "
                                 f"{writer.proc.returncode}:\n{writer.stderr}")
        code = writer.kill()
        assert code == -signal.SIGKILL, f"{ctx}: exit code {code}\n{writer.stderr}"
        done = writer.committed()
        reported.update(done)
        log.append((round_no, round(delay, 3), len(done)))
        ctx = f"seed={SEED} (AMPHORA_CRASH_SEED), parts={parts}, after kill {round_no}, log {log}"
        count = check_database(uri, reported, ctx)
    ctx = f"seed={SEED} (AMPHORA_CRASH_SEED), parts={parts}, log {log}"
    assert count > 0 or not reported, ctx
    # the file still takes new commits: a clean run of 10 more transactions
    writer = Writer(uri, count + 10, parts)
    code = writer.wait(timeout=120)
    assert code == 0, f"{ctx}: the writer failed after the crashes:\n{writer.stderr}"
    assert writer.lines[-1] == "DONE", f"{ctx}: {writer.lines[-3:]}"
    reported.update(writer.committed())
    final = check_database(uri, reported, ctx)
    assert final == count + 10, f"{ctx}: count {final}, expected {count + 10}"
    check_storage(uri, final, ctx)
    print(f"crash test: seed {SEED}, {final} transactions, rounds {log}, "
          f"{time.monotonic() - t0:.1f}s")


@pytest.mark.timeout(120)
def test_sigkill_writer_small_transactions(tmp_path):
    """5 kills of a writer committing small transactions (6 objects + buckets each)."""
    _crash_rounds(tmp_path, kills=5, parts=3, max_delay=0.8)


@pytest.mark.timeout(120)
def test_sigkill_writer_large_transactions(tmp_path):
    """3 kills of a writer committing large transactions (200 objects each), so that kills
    are likely to land inside a commit."""
    _crash_rounds(tmp_path, kills=3, parts=200, max_delay=0.8)


@pytest.mark.timeout(120)
def test_sigkill_during_creation_and_open(tmp_path):
    """Writers killed early, mostly while they start: interpreter start-up, creating the
    file and its schema, creating the root, the setup transaction. Each file must then
    open (or be absent) and take commits."""
    rng = random.Random(SEED + 1)
    log = []
    for round_no in range(10):
        path = tmp_path / f"early{round_no}.db"
        uri = sqlite_uri(path)
        writer = Writer(uri, "-")
        delay = rng.uniform(0.02, 0.25)
        time.sleep(delay)
        if writer.proc.poll() is not None:
            raise AssertionError(f"seed={SEED + 1} round {round_no}: the writer exited with "
                                 f"{writer.proc.returncode}:\n{writer.stderr}")
        writer.kill()
        reported = set(writer.committed())
        log.append((round_no, round(delay, 3), "READY" in writer.lines, len(reported)))
        ctx = f"seed={SEED + 1} (AMPHORA_CRASH_SEED + 1), round {round_no}, log {log}"
        count = check_database(uri, reported, ctx)
        writer = Writer(uri, count + 3)
        code = writer.wait(timeout=120)
        assert code == 0, f"{ctx}: the writer failed on the killed file:\n{writer.stderr}"
        assert check_database(uri, reported, ctx) == count + 3, ctx
    print(f"early kills: seed {SEED + 1}, rounds {log}")
