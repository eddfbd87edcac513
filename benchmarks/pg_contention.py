"""A hot spot on PostgreSQL: several processes increment one counter, amphora against
RelStorage on the same server, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/pg_contention.py                    # 4 and 8 processes
    .venv/bin/python benchmarks/pg_contention.py --processes 4 --commits 200 --pg-fsync off

Each contender gets a new database on a private PostgreSQL server (the shootout's: see
``shootout.PostgreSQLServer``; ``--pg-fsync on``, the default, runs it with PostgreSQL's
durable defaults, ``off`` as the tests' server). Every worker is a process of its own
that opens the database the way an application does (``amphora.open(uri)``, or
``ZODB.DB(RelStorage(PostgreSQLAdapter(dsn)))`` with a 50 MB local cache), loads the
counter, waits for the start signal, then commits ``--commits`` increments in a retry
loop (a ``ConflictError`` aborts and tries again). The clock runs from the signal to the
last worker's end; conflicts are the retries the workers counted. The final count is
checked.

Counters:

``plain``   a ``Counter(Persistent)`` with an integer attribute: every concurrent
            increment is a conflict the loser retries
``length``  a ``BTrees.Length.Length``: its ``_p_resolveConflict`` merges concurrent
            increments, in the committing process
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from persistent import Persistent

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

CONTENDERS = ("amphora-postgresql", "relstorage-postgresql")
#: with --compare-finish: amphora committing in tpc_finish, as before it finished in the vote
TWO_STEP = "amphora-postgresql-finish"
COUNTERS = ("plain", "length")


class Counter(Persistent):
    """A plain persistent counter: no conflict resolution."""

    def __init__(self) -> None:
        self.value = 0

    def change(self, delta: int) -> None:
        self.value += delta

    def __call__(self) -> int:
        return self.value


def open_db(contender: str, uri: str, dsn: str) -> Any:
    if contender.startswith("amphora-postgresql"):
        import amphora
        db = amphora.open(uri)
        db.storage.finish_in_vote = contender != TWO_STEP
        return db
    import ZODB
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage
    options = Options(keep_history=True, cache_local_mb=50)
    adapter = PostgreSQLAdapter(dsn=dsn, options=options)
    return ZODB.DB(RelStorage(adapter, options=options))


def worker(contender: str, uri: str, dsn: str, commits: int) -> None:
    """One process's loop (run by ``--worker``): prints ready, waits, commits, prints
    ``done <retries> <seconds>``."""
    import transaction
    from ZODB.POSException import ConflictError
    db = open_db(contender, uri, dsn)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["counter"]()  # loaded: the timed part is the commits
    tm.abort()
    print("ready", flush=True)
    sys.stdin.readline()
    retries = 0
    started = time.perf_counter()
    for _ in range(commits):
        while True:
            try:
                tm.begin()
                conn.root()["counter"].change(1)
                tm.commit()
                break
            except ConflictError:
                tm.abort()
                retries += 1
    elapsed = time.perf_counter() - started
    storage = getattr(db, "storage", None)
    holds, held = getattr(storage, "lock_holds", 0), getattr(storage, "lock_held", 0.0)
    print("done", retries, elapsed, holds, held, flush=True)
    conn.close()
    db.close()


def run(server: Any, contender: str, counter: str, processes: int, commits: int,
        base: str) -> dict[str, Any]:
    import transaction
    from BTrees.Length import Length
    path = tempfile.mkdtemp(prefix=f"{contender}-{counter}-{processes}-", dir=base)
    name = server.create(path)
    uri, dsn = server.uri(name), server.dsn(name)
    try:
        db = open_db(contender, uri, dsn)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        # (the class as the workers import it, not this script's __main__.Counter)
        from pg_contention import Counter as ImportedCounter
        conn.root()["counter"] = ImportedCounter() if counter == "plain" else Length()
        tm.commit()
        conn.close()
        db.close()
        code = (f"import sys; sys.path.insert(0, {str(_HERE)!r}); import pg_contention; "
                f"pg_contention.worker({contender!r}, {uri!r}, {dsn!r}, {commits})")
        workers = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
                   for _ in range(processes)]
        for w in workers:
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {contender} worker did not start")
        started = time.perf_counter()
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        retries, loops, holds, held = 0, [], 0, 0.0
        for w in workers:
            line = w.stdout.readline().split()
            if not line or line[0] != "done":
                raise RuntimeError(f"a {contender} worker failed")
            retries += int(line[1])
            loops.append(float(line[2]))
            holds += int(line[3])
            held += float(line[4])
        elapsed = time.perf_counter() - started
        for w in workers:
            w.wait(60)
        db = open_db(contender, uri, dsn)
        conn = db.open(transaction.TransactionManager())
        count = conn.root()["counter"]()
        conn.close()
        db.close()
        if count != processes * commits:
            raise RuntimeError(f"{contender} {counter}: counted {count}, "
                               f"expected {processes * commits}")
        total = processes * commits
        return {"contender": contender, "counter": counter, "processes": processes,
                "commits": total, "seconds": elapsed, "commits_per_s": total / elapsed,
                "conflicts": retries, "conflicts_per_commit": retries / total,
                # amphora only: the commit lock's hold per vote that took it, in ms
                # (see pg_lock_hold for how it is counted)
                "lock_hold_ms": 1e3 * held / holds if holds else None}
    finally:
        server.drop(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", default="4,8",
                   help="comma-separated process counts (default 4,8)")
    p.add_argument("--commits", type=int, default=200,
                   help="increments each process commits (default 200)")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each case; medians are reported (default 3)")
    p.add_argument("--counters", default=",".join(COUNTERS),
                   help="comma-separated: plain, length (default both)")
    p.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                   help="on: PostgreSQL's durable defaults (fsync, synchronous_commit); "
                        "off: the tests' server (default on)")
    p.add_argument("--compare-finish", action="store_true",
                   help=f"also run {TWO_STEP}: amphora committing in tpc_finish (a round "
                        "trip later), as it did before finishing in the vote")
    p.add_argument("--json", metavar="FILE", help="write every run as JSON")
    args = p.parse_args(argv)
    from shootout import PostgreSQLServer
    server = PostgreSQLServer(durable=args.pg_fsync == "on")
    processes = [int(n) for n in args.processes.split(",")]
    counters = args.counters.split(",")
    contenders = CONTENDERS + ((TWO_STEP,) if args.compare_finish else ())
    base = tempfile.mkdtemp(prefix="pg-contention-")
    runs: list[dict[str, Any]] = []
    try:
        server.server()
        print(f"PostgreSQL {server.version()}: {server.settings}; "
              f"{args.commits} commits per process, {args.rounds} rounds", flush=True)
        for _ in range(args.rounds):
            for counter in counters:
                for n in processes:
                    for contender in contenders:  # alternated within a round
                        runs.append(run(server, contender, counter, n, args.commits, base))
    finally:
        server.stop()
    print("\n| counter | processes | storage | commits/s | vs RelStorage | conflicts/commit "
          "| lock hold ms |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for counter in counters:
        for n in processes:
            def med(contender: str, key: str) -> float | None:
                values = [r[key] for r in runs if r["contender"] == contender
                          and r["counter"] == counter and r["processes"] == n]
                values = [v for v in values if v is not None]
                return statistics.median(values) if values else None
            reference = med(CONTENDERS[1], "commits_per_s")
            for contender in contenders:
                rate, hold = med(contender, "commits_per_s"), med(contender, "lock_hold_ms")
                print(f"| {counter} | {n} | {contender} | {rate:.0f} | {rate / reference:.2f}x "
                      f"| {med(contender, 'conflicts_per_commit'):.2f} "
                      f"| {'' if hold is None else f'{hold:.2f}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": server.settings, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
