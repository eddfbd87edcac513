"""A catalog range query through ``amphora serve``: round trips and time, cold client.

Run from the repository root::

    .venv/bin/python benchmarks/catalog_bench.py                  # 100,000 objects
    .venv/bin/python benchmarks/catalog_bench.py --objects 20000

The database (an SQLite file, built once per run, untimed) holds ``--objects`` tasks, each
with an integer ``points`` in a field index of an ``amphora.catalog.Catalog``. A fresh
client of a real ``amphora serve`` process asks for the ten tasks of smallest ``points``
within a range holding about half of them, sorted, and reads an attribute of each:

``catalog``         ``catalog.query(InRange("points", lo, hi), sort="points", limit=10)``:
                    the index's trees loaded level by level, the forward tree read in order
``zope.index walk`` the same answer from the same ``zope.index`` FieldIndex without the
                    catalog's prefetching: ``apply((lo, hi))`` then ``sort(..., limit=10)``,
                    each B-tree node loaded when the walk reaches it

each in three settings: a plain database with the server's read-ahead (the default: a
load brings what the records loaded refer to, up to 2000 records); the same without it
(``LOAD_MANY`` only); and an encrypted database (a second file, every record sealed; the
server runs without a keyring, and the client, which holds it, asks for no read-ahead:
the server cannot see references in sealed records). Reported: read requests (round
trips) and milliseconds, the median of ``--runs`` cold clients. A benchmark, not a test:
nothing asserts a time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from persistent import Persistent

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))

import amphora  # noqa: E402
from amphora.catalog import Catalog, InRange  # noqa: E402
from amphora.server import protocol as p  # noqa: E402
from clients import record_requests  # noqa: E402
from serverprocess import ServerProcess  # noqa: E402


class Task(Persistent):
    def __init__(self, n: int):
        self.title = f"task {n}"
        self.points = (n * 7919) % 1_000_003  # spread, not in insertion order


Task.__module__ = "catalog_bench"  # pickled by reference; the server never unpickles it
sys.modules["catalog_bench"] = sys.modules[__name__]


def build(path: Path, objects: int, keyring: amphora.Keyring | None = None) -> None:
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    with db.transaction() as conn:
        catalog = Catalog.open(conn)
        catalog.add_field("points", class_=Task, attribute="points")
    done = 0
    while done < objects:
        with db.transaction() as conn:
            catalog = Catalog.open(conn)
            for n in range(done, min(objects, done + 5000)):
                catalog.index(Task(n))  # added to the connection by the catalog
        done = min(objects, done + 5000)
    db.close()


def cold(address: str, read_ahead: bool, ask, keyring: amphora.Keyring | None = None
         ) -> tuple[int, float, list]:
    db = amphora.open(f"amphora://{address}", keyring=keyring)
    if not read_ahead:
        db.storage.read_ahead = False
    sent = record_requests(db)
    started = time.perf_counter()
    with db.transaction() as conn:
        answer = ask(conn)
    elapsed = time.perf_counter() - started
    db.close()
    reads = [m for m in sent if m not in (p.SYNC, p.LAST_TRANSACTION, p.NEW_OIDS)]
    return len(reads), elapsed * 1000, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    lo, hi = 250_000, 750_000

    def by_catalog(conn):
        found = Catalog.open(conn).query(InRange("points", lo, hi), sort="points", limit=10)
        return [task.points for task in found]

    def by_walk(conn):
        index = Catalog.open(conn).indexes()["points"].index
        docids = index.sort(index.apply((lo, hi)), limit=10)
        return [conn.get(amphora.utils.p64(docid)).points for docid in docids]

    with tempfile.TemporaryDirectory() as directory:
        plain, sealed = Path(directory) / "catalog.db", Path(directory) / "sealed.db"
        keyring = amphora.Keyring.create(Path(directory) / "sealed.keyring", "benchmark")
        for path, keys in ((plain, None), (sealed, keyring)):
            started = time.perf_counter()
            build(path, args.objects, keys)
            print(f"{args.objects:,} tasks indexed in {path.name} "
                  f"in {time.perf_counter() - started:.1f} s")
        settings = (("plain", plain, True, None), ("plain", plain, False, None),
                    ("encrypted", sealed, False, keyring))
        expected = None
        print(f"{'query':<18} {'database':<10} {'read-ahead':<11} {'round trips':>11} "
              f"{'ms (median)':>12}")
        for database, path, read_ahead, keys in settings:
            server = ServerProcess(f"sqlite:///{path}")  # never given the keyring
            try:
                for name, ask in (("catalog", by_catalog), ("zope.index walk", by_walk)):
                    runs = [cold(server.address, read_ahead, ask, keys)
                            for _ in range(args.runs)]
                    answers = {tuple(answer) for _, _, answer in runs}
                    expected = expected or answers
                    if answers != expected:
                        raise SystemExit(f"{name}: a different answer {answers} != {expected}")
                    print(f"{name:<18} {database:<10} {'yes' if read_ahead else 'no':<11} "
                          f"{statistics.median(r for r, _, _ in runs):>11.0f} "
                          f"{statistics.median(ms for _, ms, _ in runs):>12.1f}")
            finally:
                server.stop()


if __name__ == "__main__":
    main()
