"""What answering a search at the connection's snapshot costs the read path.

Run from the repository root::

    .venv/bin/python benchmarks/snapshot_search_bench.py                # SQLite
    .venv/bin/python benchmarks/snapshot_search_bench.py --postgresql   # also PostgreSQL

The database holds 2000 small objects with a mirror and an expression index on their
``group`` (200 groups of 10). A reader's ``conn.where("CAST(state->>'group' AS integer) =
%s", g)`` returns 10 objects, loaded. Each sample begins a new transaction on the reader,
lets a writer commit ``changed`` objects (0, 1, 10 or 100, none of them in group ``g``),
then times one ``where``. ``snapshot`` is the search as amphora runs it (at the
connection's snapshot); ``latest`` is the same search against the latest documents (the
storage's ``query_mirror`` without ``before``: what searches did before they answered at
the snapshot). Rounds alternate between the two; reported are medians in microseconds.
A benchmark, not a test: nothing asserts a time.

PostgreSQL: ``--postgresql`` starts the tests' private server (``tests/pgserver.py``).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT / "src", _ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import transaction  # noqa: E402
from persistent import Persistent  # noqa: E402

import amphora  # noqa: E402

OBJECTS = 2000
GROUPS = 200
CONDITION = "CAST(state->>'group' AS integer) = %s"


class Doc(Persistent):
    def __init__(self, n: int):
        self.n = n
        self.group = n % GROUPS
        self.name = f"doc {n}"


def build(db: amphora.DB) -> None:
    """2000 documents with an index on their group; closes ``db``."""
    with db.transaction() as conn:
        for n in range(OBJECTS):
            conn.root()[f"d{n}"] = Doc(n)
    db.create_mirror()
    db.create_index("doc_group", "CAST(state->>'group' AS integer)", class_name=f"{__name__}.Doc")
    db.close()


def latest(storage: Any) -> None:
    """Make ``storage`` answer searches from its latest documents."""
    query = type(storage).query_mirror

    def at_latest(sql: str, params: Any = (), before: Any = None, timeout: Any = None) -> list:
        return query(storage, sql, params)
    storage.query_mirror = at_latest


def sample(reader: Any, manager: Any, writer_db: amphora.DB,
           changed: int, step: int) -> float:
    manager.begin()
    group = step % GROUPS
    if changed:
        with writer_db.transaction() as conn:
            root = conn.root()
            for k in range(changed):
                doc = root[f"d{(group + 1 + k * GROUPS // 7) % OBJECTS}"]
                doc.name = f"doc {doc.n} at {step}"
    start = time.perf_counter()
    found = reader.where(CONDITION, group)
    elapsed = time.perf_counter() - start
    if len(found) != OBJECTS // GROUPS:
        raise AssertionError(f"{len(found)} found")
    return elapsed * 1e6


def run(name: str, open_db: Any, samples: int) -> None:
    db_snapshot = open_db()
    db_latest = open_db()
    writer = open_db()  # commits from another database, as another process's would come
    latest(db_latest.storage)
    print(f"{name}: median microseconds per where (10 of {OBJECTS} objects), {samples} samples")
    print(f"{'changed since the snapshot':>28} {'snapshot':>10} {'latest':>10} {'cost':>7}")
    for changed in (0, 1, 10, 100):
        times: dict[str, list[float]] = {"snapshot": [], "latest": []}
        conns = {}
        for mode, db in (("snapshot", db_snapshot), ("latest", db_latest)):
            manager = transaction.TransactionManager()
            conns[mode] = (db.open(manager), manager)
        for step in range(samples):
            for mode, db in (("snapshot", db_snapshot), ("latest", db_latest)):
                conn, manager = conns[mode]
                conn.cacheMinimize()
                times[mode].append(sample(conn, manager, writer, changed, step))
        for conn, manager in conns.values():
            manager.abort()
            conn.close()
        snap, last = (statistics.median(times[m]) for m in ("snapshot", "latest"))
        print(f"{changed:>28} {snap:>10.0f} {last:>10.0f} {snap / last - 1:>+7.0%}")
    for db in (db_snapshot, db_latest, writer):
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--postgresql", action="store_true")
    args = parser.parse_args()
    sys.modules.setdefault(__name__, sys.modules["__main__"])
    directory = tempfile.mkdtemp()
    try:
        path = f"{directory}/bench.db"
        build(amphora.open(f"sqlite:///{path}"))
        run("sqlite", lambda: amphora.open(f"sqlite:///{path}"), args.samples)
        if args.postgresql:
            import pgserver
            server = pgserver.require()
            uri = server.uri(schema="bench_snapshot_search")
            with server.connect() as conn:
                conn.execute("DROP SCHEMA IF EXISTS bench_snapshot_search CASCADE")
                conn.commit()
            build(amphora.open(uri))
            try:
                run("postgresql", lambda: amphora.open(uri), args.samples)
            finally:
                with server.connect() as conn:
                    conn.execute("DROP SCHEMA bench_snapshot_search CASCADE")
                    conn.commit()
                pgserver.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
