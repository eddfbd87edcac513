"""What the JSON mirror costs a commit: the same commits with the mirror off, kept by every
commit (``sync``), and kept by a follower (``follow``; the follower's own time reported
apart), in one run.

Run from the repository root::

    .venv/bin/python benchmarks/mirror_bench.py                  # SQLite
    .venv/bin/python benchmarks/mirror_bench.py --uri postgresql://... # also PostgreSQL

Workloads (the core shootout's objects: ``Item``, four attributes, about 300 bytes per
record): ``add`` puts N new objects into an OOBTree and commits; ``update`` changes one
attribute of all N and commits; N is 10 (a typical application transaction) and 1000 (a
bulk load) unless ``--objects`` says otherwise. Each sample is one transaction; reported are medians in
ms per transaction and the cost of the mirror = (median with mirror / median without) - 1.
Rounds alternate between the modes so that machine noise spreads over all of them. A
benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import gc
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
from shootout import make_items  # noqa: E402

MODES = ("off", "sync", "follow")


def one_round(uri: str, mode: str, n: int, loops: int, seed: int) -> dict[str, list[float]]:
    db = amphora.open(uri, cache_size=4 * n + 1000)
    samples: dict[str, list[float]] = {"add": [], "update": [], "follower": []}
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
                started = time.perf_counter()
                conn = db.open(tm)
                tree = conn.root()[f"t{k}"]
                for i, item in enumerate(items):
                    tree[i] = item
                tm.commit()
                conn.close()
                samples["add"].append(time.perf_counter() - started)
                started = time.perf_counter()
                conn = db.open(tm)
                for item in conn.root()[f"t{k}"].values():
                    item.attr += 1
                tm.commit()
                conn.close()
                samples["update"].append(time.perf_counter() - started)
                if mode == "follow":
                    started = time.perf_counter()
                    db.follow_mirror()
                    samples["follower"].append(time.perf_counter() - started)
            finally:
                gc.enable()
    finally:
        db.close()
    return samples


def fresh_uri(kind: str, base: str, uri: str | None, round_no: int, mode: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{base}/{mode}-{round_no}.db"
    assert uri is not None
    return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, nargs="+", default=[10, 1000],
                        help="objects per commit (default: 10 and 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loops", type=int, default=5)
    parser.add_argument("--uri", help="also measure this PostgreSQL database (its amphora "
                                      "tables are dropped and made again for each round)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    kinds = ["sqlite"] + (["postgresql"] if args.uri else [])
    print(f"mirror cost: {args.rounds} rounds, python {sys.version.split()[0]}")
    for n in args.objects:
        loops = max(args.loops, 500 // n)  # small commits: more samples
        measure(kinds, n, loops, args)
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
                    if kind == "postgresql":
                        reset_postgresql(uri)
                    got = one_round(uri, mode, n, loops, args.seed + round_no)
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


def reset_postgresql(uri: str) -> None:
    """Drop what amphora keeps in the database, so that each round starts empty."""
    storage: Any = amphora.open_storage(uri)
    try:
        drop = getattr(storage, "drop_all", None)
        if drop is None:
            raise SystemExit("this PostgreSQL storage cannot be reset for the benchmark")
        drop()
    finally:
        storage.close()


if __name__ == "__main__":
    sys.exit(main())
