"""How long amphora.jsonpickle takes per record, beside a yardstick.

Run from the repository root::

    .venv/bin/python benchmarks/jsonpickle_bench.py              # all cases
    .venv/bin/python benchmarks/jsonpickle_bench.py --records 2000 --repeat 9
    .venv/bin/python benchmarks/jsonpickle_bench.py --profile    # cProfile the small case

Cases, each a list of distinct records written by amphora's ObjectWriter:

``small``   the shootout's ``Item``: four attributes (a str, two ints, 200 random bytes)
``bucket``  an ``OOBucket`` of 15 references to ``Item`` objects
``mixed``   a larger state: 40 attributes of strings, numbers, floats, nested dicts and
            lists, tuples, sets, datetimes, dates, ``Decimal``, bytes and references

``jsonpickle`` is ``record_to_json`` as the mirror calls it: the C fast path when amphora
was built with it (``amphora.jsonpickle.COMPILED``), the Python transcoder for the records
the fast path leaves to it; ``python`` is the Python transcoder alone; ``fast`` is the share
of the case's records the fast path took.

The yardstick does what the transcoder avoids: unpickles the record with the classes
imported (``pickle.Unpickler``, references read as their oid) and ``json.dumps`` the state
(with a ``default`` for bytes, sets, dates and objects). Times are the best of
``--repeat`` runs over all records, in microseconds per record; the garbage collector is
off while timing. It is a benchmark, not a test: nothing asserts a time.

The mirror's budget is 30% of a commit; a 1000-object commit of ``small`` objects takes
about 7.5 ms (``docs/benchmarks.md``), so the line "share of a 1000-object commit" is the
transcoding of 1000 ``small`` records against that.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import gc
import io
import json
import pickle
import random
import time
from typing import Any, Callable

from BTrees.OOBTree import OOBucket
from persistent import Persistent

from amphora import jsonpickle
from amphora.jsonpickle import record_to_json
from amphora.serialize import ObjectWriter
from shootout import PAYLOAD_SIZE, Item  # benchmarks/ is this script's folder

COMMIT_MS = 7.5  # a 1000-object commit of small objects


class Document(Persistent):
    """A larger object with mixed attributes."""


class Jar:
    def __init__(self):
        self.next = 0

    def new_oid(self) -> bytes:
        self.next += 1
        return self.next.to_bytes(8, "big")


def writer() -> tuple[ObjectWriter, Jar]:
    jar = Jar()
    return ObjectWriter(jar, jar.new_oid, lambda new: None), jar


def small_records(n: int, rnd: random.Random) -> list[bytes]:
    out, _jar = writer()
    return [out.serialize(Item(i, rnd.randbytes(PAYLOAD_SIZE))) for i in range(n)]


def bucket_records(n: int, rnd: random.Random) -> list[bytes]:
    out, jar = writer()
    records = []
    for i in range(n):
        bucket = OOBucket()
        for j in range(15):
            item = Item(j, b"")
            item._p_oid = jar.new_oid()
            item._p_jar = jar
            bucket[f"key-{i:06d}-{j:02d}"] = item
        records.append(out.serialize(bucket))
    return records


def mixed_records(n: int, rnd: random.Random) -> list[bytes]:
    out, jar = writer()
    records = []
    for i in range(n):
        doc = Document()
        ref = Item(i, b"")
        ref._p_oid = jar.new_oid()
        ref._p_jar = jar
        for k in range(8):
            setattr(doc, f"text{k}", f"some words about thing {i} number {k} " * 2)
            setattr(doc, f"number{k}", rnd.randrange(10**6))
            setattr(doc, f"ratio{k}", rnd.random())
        doc.when = datetime.datetime(2026, 1, 1, 12, rnd.randrange(60))
        doc.day = datetime.date(2026, 2, 3)
        doc.price = decimal.Decimal("19.90")
        doc.tags = {"red", "green", "blue"}
        doc.size = (rnd.randrange(100), rnd.randrange(100))
        doc.blob = rnd.randbytes(64)
        doc.owner = ref
        doc.history = [{"at": datetime.datetime(2025, 12, d + 1), "by": ref, "note": "edit"}
                       for d in range(5)]
        doc.settings = {"colour": "red", "width": 3, "flags": [True, False, None],
                        "limits": {"low": 0.5, "high": 9.5}}
        records.append(out.serialize(doc))
    return records


def _persistent_load(pid: Any) -> Any:
    return int.from_bytes(pid[0] if isinstance(pid, tuple) else pid, "big")


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return vars(value)


def yardstick(data: bytes) -> str:
    """Unpickle (importing classes) and json.dumps: what the transcoder is compared with."""
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = _persistent_load
    unpickler.load()
    return json.dumps(unpickler.load(), default=_fallback)


def best_us(function: Callable[[bytes], Any], records: list[bytes], repeat: int) -> float:
    """Best time of ``repeat`` runs over ``records``, in microseconds per record."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            for data in records:
                function(data)
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best / len(records) * 1e6


CASES = {"small": small_records, "bucket": bucket_records, "mixed": mixed_records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", "-n", type=int, default=1000,
                        help="distinct records per case (default 1000)")
    parser.add_argument("--repeat", "-r", type=int, default=7,
                        help="timed runs per case; the best counts (default 7)")
    parser.add_argument("--only", default="", help="comma-separated case names")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile record_to_json on the first case instead")
    args = parser.parse_args(argv)
    names = [name for name in args.only.split(",") if name] or list(CASES)
    rnd = random.Random(1)
    if args.profile:
        import cProfile
        import pstats
        records = CASES[names[0]](args.records, rnd)
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [record_to_json(data) for data in records * 20])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
        return
    print(f"C fast path built: {jsonpickle.COMPILED}")
    print(f"{'case':8} {'record bytes':>12} {'json bytes':>10} {'jsonpickle µs':>14} "
          f"{'python µs':>10} {'fast':>5} {'yardstick µs':>13} {'ratio':>6}")
    for name in names:
        records = CASES[name](args.records, rnd)
        ours = best_us(record_to_json, records, args.repeat)
        python = best_us(jsonpickle._record_to_json, records, args.repeat)
        theirs = best_us(yardstick, records, args.repeat)
        size = sum(map(len, records)) // len(records)
        text = sum(len(record_to_json(data)[1].encode()) for data in records) // len(records)
        fast = 0.0
        if jsonpickle.COMPILED:
            from amphora._transcoder import transcode
            fast = sum(transcode(data) is not None for data in records) / len(records)
        print(f"{name:8} {size:12d} {text:10d} {ours:14.2f} {python:10.2f} {fast:5.0%} "
              f"{theirs:13.2f} {ours / theirs:6.2f}")
        if name == "small":
            share = ours * 1000 / 1000 / COMMIT_MS * 100
            print(f"{'':8} share of a 1000-object commit ({COMMIT_MS} ms): {share:.0f}%")


if __name__ == "__main__":
    main()
