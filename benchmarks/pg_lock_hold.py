"""The PostgreSQL commit lock's hold per commit, without the noise of many processes.

Run from the repository root::

    .venv/bin/python benchmarks/pg_lock_hold.py --pg-fsync off
    .venv/bin/python benchmarks/pg_lock_hold.py --commits 500 --pg-fsync on

One process, two database objects on one database (two processes' view), the shootout's
private server (see ``pg_contention``). Cases, each ``--commits`` times:

``alone``   the first increments a counter and commits: no race
``lost``    the second reads the counter, the first commits an increment, then the
            second increments and commits: it lost the race. A plain counter's commit
            is a ``ConflictError``, retried (the retry's hold is counted); a
            ``BTrees.Length``'s is merged

``--history N`` first gives each database a history of N transactions and N old
revisions (rows made by SQL, below every tid the cases write, then ``ANALYZE``), as a
database in use has: PostgreSQL plans statements by the size of the tables.

Reported per case: the median of ``--rounds`` runs of the mean lock hold of the
committing database (``storage.lock_held / storage.lock_holds``) and of the time its
``commit()`` (and retry) took. A commit in two round trips counts its hold from the reply
showing the lock taken to the reply to COMMIT; one made in one round trip (see
``PostgreSQLStorage``), on the server's clock, from the statement after the one that took
the lock to the one after COMMIT.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))


_HISTORY = ("INSERT INTO revisions (oid, tid, end_tid, data, refs) SELECT 1000000000 + n, n,"
            " n + 1, '\\x00', NULL FROM generate_series(1, {n}) AS n",
            "INSERT INTO transactions (tid, username, description, extension, oids)"
            " SELECT n, '', '', '', '' FROM generate_series(1, {n}) AS n",
            "ANALYZE")


def give_history(uri: str, rows: int) -> None:
    """N transactions and N replaced revisions (of objects no case reads), tids 1 to N."""
    import amphora
    import psycopg
    amphora.open(uri).close()  # (the schema)
    with psycopg.connect(uri, autocommit=True) as conn:
        for statement in _HISTORY:
            conn.execute(statement.format(n=rows))


def case(uri: str, counter: str, lost: bool, commits: int) -> tuple[float, float]:
    """(lock hold ms, commit ms) of the committing database, per commit."""
    import amphora
    import transaction
    from BTrees.Length import Length
    from ZODB.POSException import ConflictError
    from pg_contention import Counter
    dbs = [amphora.open(uri), amphora.open(uri)]
    tms = [transaction.TransactionManager(), transaction.TransactionManager()]
    conns = [db.open(tm) for db, tm in zip(dbs, tms)]
    conns[0].root()["counter"] = Counter() if counter == "plain" else Length()
    tms[0].commit()
    committer = 1 if lost else 0
    storage = dbs[committer].storage
    holds, held, spent = storage.lock_holds, storage.lock_held, 0.0
    for _ in range(commits):
        tms[1].begin()
        conns[1].root()["counter"]()  # read before the other's commit
        if lost:
            conns[0].root()["counter"].change(1)
            tms[0].commit()
        started = time.perf_counter()
        conns[committer].root()["counter"].change(1)
        try:
            tms[committer].commit()
        except ConflictError:
            tms[committer].abort()
            tms[committer].begin()
            conns[committer].root()["counter"].change(1)
            tms[committer].commit()
        spent += time.perf_counter() - started
        tms[0].begin()
    hold = 1e3 * (storage.lock_held - held) / (storage.lock_holds - holds)
    for db in dbs:
        db.close()
    return hold, 1e3 * spent / commits


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=300, help="commits per case (default 300)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each case (default 3)")
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="transactions and old revisions each database has first (default 0)")
    p.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                   help="on: PostgreSQL's durable defaults; off: the tests' server")
    args = p.parse_args(argv)
    from shootout import PostgreSQLServer
    server = PostgreSQLServer(durable=args.pg_fsync == "on")
    base = tempfile.mkdtemp(prefix="pg-lock-hold-")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        server.server()
        print(f"PostgreSQL {server.version()}: {server.settings}; {args.commits} commits "
              f"per case, {args.rounds} rounds, a history of {args.history} transactions",
              flush=True)
        for _ in range(args.rounds):
            for counter in ("plain", "length"):
                for name in ("alone", "lost"):
                    path = tempfile.mkdtemp(prefix=f"{counter}-{name}-", dir=base)
                    uri = server.uri(server.create(path))
                    try:
                        if args.history:
                            give_history(uri, args.history)
                        results.setdefault((counter, name), []).append(
                            case(uri, counter, name == "lost", args.commits))
                    finally:
                        server.drop(path)
    finally:
        server.stop()
    print("\n| counter | case | lock hold ms | commit ms |")
    print("|---|---|---:|---:|")
    for (counter, name), runs in results.items():
        print(f"| {counter} | {name} | {statistics.median(r[0] for r in runs):.3f} "
              f"| {statistics.median(r[1] for r in runs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
