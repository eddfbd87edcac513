"""What the JSON mirror costs a commit: the same commits with the mirror off, kept by every
commit (``sync``), and kept by a follower (``follow``; the follower's own time reported
apart), in one run.

Run from the repository root::

    .venv/bin/python benchmarks/mirror_bench.py                  # SQLite
    .venv/bin/python benchmarks/mirror_bench.py --postgresql     # also PostgreSQL (private server)
    .venv/bin/python benchmarks/mirror_bench.py --uri postgresql://... # also this PostgreSQL

Workloads (the core shootout's objects: ``Item``, four attributes, about 300 bytes per
record): ``add`` puts N new objects into an OOBTree and commits; ``update`` changes one
attribute of all N and commits; N is 10 (a typical application transaction) and 1000 (a
bulk load) unless ``--objects`` says otherwise. Each sample is one transaction; reported are medians in
ms per transaction and the cost of the mirror = (median with mirror / median without) - 1.
Rounds alternate between the modes so that machine noise spreads over all of them. A
benchmark, not a test: nothing asserts a time.

PostgreSQL: every round of every mode gets a new schema (``?schema=bench_mirror_...``),
dropped after the round. ``--postgresql`` starts a private server for the run, as the
shootout does (``--pg-fsync on``, the default: PostgreSQL's durable defaults; ``off``: the
tests' settings); ``--uri`` uses a server of your own instead (the user must be allowed
to create schemas in its database).
"""
from __future__ import annotations

import argparse
import gc
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # the amphora of this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import transaction  # noqa: E402
from BTrees.OOBTree import OOBTree  # noqa: E402

import amphora  # noqa: E402
from shootout import PostgreSQLServer, make_items  # noqa: E402

MODES = ("off", "sync", "follow")


class WallClock:
    """What a sample is: seconds on the wall clock. ``start()`` before the timed work,
    ``stop(start())`` after it gives the sample (other meters give other samples)."""

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, started: float) -> float:
        return time.perf_counter() - started


def one_round(uri: str, mode: str, n: int, loops: int, seed: int,
              meter: Any = None) -> dict[str, list[Any]]:
    """The samples (``meter``'s, by default seconds) of ``loops`` adds and updates of
    ``n`` objects, and of catching up with them in follow mode, in one new database."""
    meter = meter or WallClock()
    db = amphora.open(uri, cache_size=4 * n + 1000)
    samples: dict[str, list[Any]] = {"add": [], "update": [], "follower": []}
    try:
        if mode != "off":
            db.create_mirror(mode=mode)
        tm = transaction.TransactionManager()
        for k in range(loops):
            conn = db.open(tm)
            conn.root()[f"t{k}"] = OOBTree()
            tm.commit()
            conn.close()
            items = make_items(n, seed + k)
            gc.collect()
            gc.disable()
            try:
                started = meter.start()
                conn = db.open(tm)
                tree = conn.root()[f"t{k}"]
                for i, item in enumerate(items):
                    tree[i] = item
                tm.commit()
                conn.close()
                samples["add"].append(meter.stop(started))
                started = meter.start()
                conn = db.open(tm)
                for item in conn.root()[f"t{k}"].values():
                    item.attr += 1
                tm.commit()
                conn.close()
                samples["update"].append(meter.stop(started))
                if mode == "follow":
                    started = meter.start()
                    db.follow_mirror()
                    samples["follower"].append(meter.stop(started))
            finally:
                gc.enable()
    finally:
        db.close()
    return samples


def fresh_uri(kind: str, base: str, uri: str | None, round_no: int, mode: str) -> str:
    """A new, empty database for one round of one mode."""
    if kind == "sqlite":
        return f"sqlite:///{base}/{mode}-{round_no}.db"
    if uri is None:
        raise ValueError("no PostgreSQL URI")
    schema = f"bench_mirror_{mode}_{round_no}_{secrets.token_hex(4)}"
    return f"{uri}{'&' if '?' in uri else '?'}schema={schema}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[10, 1000],
                        help="objects per commit (default: 10 and 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--uri", help="also measure this PostgreSQL database (a new schema "
                                      "per round, dropped after it)")
    parser.add_argument("--postgresql", action="store_true",
                        help="also measure PostgreSQL, on a private server started for the run")
    parser.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                        help="the private server's durability (see benchmarks/shootout.py)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.uri and args.postgresql:
        parser.error("--uri and --postgresql: choose one server")
    pg = PostgreSQLServer(durable=args.pg_fsync == "on")
    try:
        if args.postgresql:
            try:
                args.uri = pg.uri(pg.create("mirror"))
            except RuntimeError as exc:
                print(f"postgresql unavailable: {exc}")
        kinds = ["sqlite"] + (["postgresql"] if args.uri else [])
        print(f"mirror cost: {args.rounds} rounds, python {sys.version.split()[0]}")
        if args.postgresql and args.uri:
            print(f"  postgresql {pg.version()} (private server, {pg.settings})")
        for n in args.objects:
            loops = max(args.loops, 500 // n)  # small commits: more samples
            measure(kinds, n, loops, args)
    finally:
        pg.stop()
    return 0


def measure(kinds: list[str], n: int, loops: int, args: argparse.Namespace) -> None:
    base = tempfile.mkdtemp(prefix="amphora-mirror-")
    results = {(kind, mode): {"add": [], "update": [], "follower": []}
               for kind in kinds for mode in MODES}
    try:
        for round_no in range(args.rounds):
            order = MODES[round_no % 3:] + MODES[:round_no % 3]
            for kind in kinds:
                for mode in order:
                    uri = fresh_uri(kind, base, args.uri, round_no, mode)
                    try:
                        got = one_round(uri, mode, n, loops, args.seed + round_no)
                    finally:
                        if kind == "postgresql":
                            drop_schema(uri)
                    for workload, values in got.items():
                        results[kind, mode][workload] += values
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{n} objects per commit ({args.rounds} x {loops} samples per cell):")
    for kind in kinds:
        for workload in ("add", "update"):
            off = statistics.median(results[kind, "off"][workload])
            cells = [f"off {off * 1000:6.2f} ms"]
            for mode in ("sync", "follow"):
                value = statistics.median(results[kind, mode][workload])
                cells.append(f"{mode} {value * 1000:6.2f} ms ({(value / off - 1) * 100:+4.0f}%)")
            print(f"  {kind:10s} {workload:6s} " + "   ".join(cells))
        follower = results[kind, "follow"]["follower"]
        if follower:
            print(f"  {kind:10s} follower: {statistics.median(follower) * 1000:.2f} ms to "
                  f"catch up with one add and one update ({2 * n} records)")


def drop_schema(uri: str) -> None:
    """Drop the schema of a round's PostgreSQL storage."""
    import psycopg
    from psycopg import sql
    storage: Any = amphora.open_storage(uri)
    dsn, schema = storage.dsn, storage.schema
    storage.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    sys.exit(main())
