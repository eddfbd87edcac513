"""Search on many objects: SQL over amphora's JSON mirror against a BTrees index in ZODB.

Run from the repository root::

    .venv/bin/python benchmarks/search_bench.py                 # 100,000 objects
    .venv/bin/python benchmarks/search_bench.py --objects 20000 --queries 500
    .venv/bin/python benchmarks/search_bench.py --postgresql    # also PostgreSQL (private server)

The same question, "the person with this e-mail address, whatever its case", answered:

``amphora-sqlite where``   ``conn.where("lower(state->>'email') = %s", email)`` on an
                           SQLite database with a mirror and the expression index
                           ``db.create_index("person_email", "lower(state->>'email')",
                           class_name=...)``; the object comes back live, loaded
``zodb-filestorage btree`` what a ZODB application keeps for this: an ``OOBTree`` from
                           lower-cased e-mail to the person, maintained by the application
                           at every change; ``index[email.lower()]`` then the object loaded
``amphora-sqlite btree``   the same BTrees index in amphora, for comparison
``amphora-postgresql where`` with ``--postgresql`` (a private server started for the run, as
                           the shootout does; ``--pg-fsync``) or ``--uri postgresql://...``
                           (a new schema there, dropped afterwards): the same mirror and
                           expression index in PostgreSQL (a jsonb column, a B-tree index
                           on the expression), the same ``conn.where``

Each query opens a connection, asks, reads one attribute of the person found and closes
the connection; the pickle caches are emptied first so that every query loads its answer
(the index pages stay cached where each database caches them). Reported: median and 95th
percentile latency per query, and the time to build each database (untimed in the
queries). A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import gc
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # the amphora of this checkout

import transaction  # noqa: E402
from BTrees.OOBTree import OOBTree  # noqa: E402
from persistent import Persistent  # noqa: E402

import amphora  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mirror_bench import drop_schema  # noqa: E402
from shootout import PostgreSQLServer  # noqa: E402


class Person(Persistent):
    def __init__(self, n: int, rnd: random.Random):
        self.name = f"Person {n}"
        self.email = f"User{n}.{rnd.randrange(10**6)}@Example.com"
        self.age = rnd.randrange(18, 90)
        self.bio = " ".join(rnd.choice(WORDS) for _ in range(12))


WORDS = ("python database object search index record commit snapshot mirror json query "
         "table tree bucket page cache").split()
CLASS_NAME = f"{Person.__module__}.{Person.__qualname__}"
BATCH = 5000  # objects per build transaction


def people(n: int, seed: int) -> list[Person]:
    rnd = random.Random(seed)
    return [Person(i, rnd) for i in range(n)]


def build(db: Any, n: int, seed: int, with_index: bool) -> None:
    """N people in an IOBTree-like OOBTree by number, and with ``with_index`` an OOBTree
    index by lower-cased e-mail, committed in batches."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    root["people"] = OOBTree()
    if with_index:
        root["by_email"] = OOBTree()
    tm.commit()
    for start in range(0, n, BATCH):
        for person in people(min(BATCH, n - start), seed + start):
            number = int(person.name.split()[1]) + start
            root["people"][number] = person
            if with_index:
                root["by_email"][person.email.lower()] = person
        tm.commit()
        conn.cacheMinimize()
    conn.close()


def sample_emails(n: int, seed: int, count: int) -> list[str]:
    everyone = [p.email for start in range(0, n, BATCH)
                for p in people(min(BATCH, n - start), seed + start)]
    rnd = random.Random(seed + 1)
    return [rnd.choice(everyone).upper() for _ in range(count)]


def time_queries(db: Any, emails: list[str], ask: Callable[[Any, str], Any]) -> list[float]:
    tm = transaction.TransactionManager()
    samples = []
    for email in emails:
        db.cacheMinimize()
        gc.disable()
        try:
            started = time.perf_counter()
            conn = db.open(tm)
            person = ask(conn, email)
            assert person.email.lower() == email.lower(), (person.email, email)
            tm.abort()
            conn.close()
            samples.append(time.perf_counter() - started)
        finally:
            gc.enable()
    return samples


def ask_where(conn: Any, email: str) -> Any:
    found = conn.where("lower(state->>'email') = lower(%s)", email, class_name=CLASS_NAME)
    return found[0]


def ask_btree(conn: Any, email: str) -> Any:
    person = conn.root()["by_email"][email.lower()]
    person.age  # noqa: B018 - load it
    return person


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--postgresql", action="store_true",
                        help="also amphora-postgresql, on a private server started for the run")
    parser.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                        help="the private server's durability (see benchmarks/shootout.py)")
    parser.add_argument("--uri", help="also amphora-postgresql, in a new schema of this "
                                      "postgresql:// database (dropped afterwards)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    if args.uri and args.postgresql:
        parser.error("--uri and --postgresql: choose one server")
    base = tempfile.mkdtemp(prefix="amphora-search-")
    emails = sample_emails(args.objects, args.seed, args.queries)
    results: list[tuple[str, float, list[float]]] = []
    pg = PostgreSQLServer(durable=args.pg_fsync == "on")
    unavailable: list[str] = []
    try:
        # amphora: mirror + expression index
        started = time.perf_counter()
        db = amphora.open(f"sqlite:///{base}/mirror.db")
        db.create_mirror()
        db.create_index("person_email", "lower(state->>'email')", class_name=CLASS_NAME)
        build(db, args.objects, args.seed, with_index=False)
        built = time.perf_counter() - started
        results.append(("amphora-sqlite where", built, time_queries(db, emails, ask_where)))
        db.close()

        # the same on PostgreSQL
        uri = args.uri
        if args.postgresql:
            try:
                uri = pg.uri(pg.create("search"))
                print(f"postgresql {pg.version()} (private server, {pg.settings})")
            except RuntimeError as exc:
                unavailable.append(f"amphora-postgresql where: unavailable: {exc}")
        if uri:
            uri += f"{'&' if '?' in uri else '?'}schema=bench_search_{secrets.token_hex(4)}"
            try:
                started = time.perf_counter()
                db = amphora.open(uri)
                db.create_mirror()
                db.create_index("person_email", "lower(state->>'email')",
                                class_name=CLASS_NAME)
                build(db, args.objects, args.seed, with_index=False)
                built = time.perf_counter() - started
                results.append(("amphora-postgresql where", built,
                                time_queries(db, emails, ask_where)))
                db.close()
            finally:
                drop_schema(uri)

        # ZODB: FileStorage with an application-kept BTrees index
        import ZODB
        from ZODB.FileStorage import FileStorage
        started = time.perf_counter()
        zdb = ZODB.DB(FileStorage(f"{base}/Data.fs"), cache_size=2 * BATCH)
        build(zdb, args.objects, args.seed, with_index=True)
        built = time.perf_counter() - started
        results.append(("zodb-filestorage btree", built, time_queries(zdb, emails, ask_btree)))
        zdb.close()

        # amphora with the same BTrees index, for comparison
        started = time.perf_counter()
        db = amphora.open(f"sqlite:///{base}/btree.db", cache_size=2 * BATCH)
        build(db, args.objects, args.seed, with_index=True)
        built = time.perf_counter() - started
        results.append(("amphora-sqlite btree", built, time_queries(db, emails, ask_btree)))
        db.close()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"search: {args.objects:,} people, {args.queries} e-mail lookups (case-insensitive),"
          f" python {sys.version.split()[0]}")
    print(f"  {'database':26s} {'build s':>8s} {'median ms':>10s} {'p95 ms':>8s}"
          f" {'vs zodb':>8s}")
    reference = statistics.median(next(samples for name, _, samples in results
                                       if name == "zodb-filestorage btree"))
    for name, built, samples in results:
        median = statistics.median(samples)
        print(f"  {name:26s} {built:8.1f} {median * 1000:10.3f} "
              f"{percentile(samples, 0.95) * 1000:8.3f} {reference / median:7.2f}x")
    for line in unavailable:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
