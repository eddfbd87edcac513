"""Blob files beside an SQLite database against the same bytes inside its records.

Run from the repository root::

    .venv/bin/python benchmarks/blobs_bench.py
    .venv/bin/python benchmarks/blobs_bench.py --count 500 --sizes 1024,65536

For each size, ``--count`` values of that size are committed, ten per transaction, to a
fresh SQLite file (``synchronous=full``, the default), then read back once by a fresh
connection, two ways:

``blob files``   ``amphora.Blob`` objects: each value a file in the blob directory,
                 written and synced before the commit, read with ``blob.open("r")``
``in records``   the value as a ``bytes`` attribute of a persistent object: SQLite keeps
                 it in the record's row (in overflow pages past a page), and a load holds
                 it whole in memory

Reported: milliseconds per value to commit and to read. This is what chose how the SQLite
storage keeps blobs (see docs/blobs.md). A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from persistent import Persistent

import amphora

PER_TRANSACTION = 10


class Value(Persistent):
    def __init__(self, data: bytes):
        self.data = data


def run(kind: str, size: int, count: int, directory: str) -> tuple[float, float]:
    path = os.path.join(directory, f"{kind}-{size}.db")
    db = amphora.open(f"sqlite:///{path}")
    payload = os.urandom(size)
    started = time.perf_counter()
    for first in range(0, count, PER_TRANSACTION):
        with db.transaction() as conn:
            for i in range(first, min(first + PER_TRANSACTION, count)):
                conn.root()[i] = amphora.Blob(payload) if kind == "blob files" else Value(payload)
    write = (time.perf_counter() - started) / count
    db.close()
    db = amphora.open(f"sqlite:///{path}")
    started = time.perf_counter()
    with db.transaction() as conn:
        root = conn.root()
        for i in range(count):
            if kind == "blob files":
                with root[i].open("r") as file:
                    assert len(file.read()) == size
            else:
                assert len(root[i].data) == size
    read = (time.perf_counter() - started) / count
    db.close()
    return write * 1000, read * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--sizes", default="100,10240,1048576,10485760")
    args = parser.parse_args()
    print(f"{'size':>10}  {'kind':<12} {'commit ms/value':>16} {'read ms/value':>14}")
    for size in [int(size) for size in args.sizes.split(",")]:
        count = args.count if size <= 1 << 20 else max(args.count // 10, PER_TRANSACTION)
        with tempfile.TemporaryDirectory() as directory:
            for kind in ("blob files", "in records"):
                write, read = run(kind, size, count, directory)
                print(f"{size:>10,}  {kind:<12} {write:>16.3f} {read:>14.3f}")


if __name__ == "__main__":
    main()
