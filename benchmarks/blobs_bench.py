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
storage keeps blobs (see docs/blobs.md).

With ``--served``, blobs through a server process instead, in the same run::

    .venv/bin/python benchmarks/blobs_bench.py --served
    .venv/bin/python benchmarks/blobs_bench.py --served --small 200 --big 4

``amphora-serve``  ``amphora serve sqlite:///<tmp>/bench.db`` (``--synchronous`` chooses
                   its ``synchronous``: ``full``, the default, syncs each blob file to
                   disk before the commit), clients ``amphora://`` (the blob cache a
                   temporary directory of each client)
``zeo``            a ZEO server process (``runzeo``) over a FileStorage with a blob
                   directory; clients ``ZEO.ClientStorage`` with ``shared_blob_dir=False``
                   and a ``blob_dir`` cache of their own (nothing shared with the server)

With ``--embedded``, the same sets in one process, no server::

    .venv/bin/python benchmarks/blobs_bench.py --embedded

``amphora-sqlite``  ``amphora.open("sqlite:///<tmp>/bench.db")`` (``--synchronous``, as
                    above), its blob files in ``bench.db.blobs/``
``filestorage``     ``ZODB.DB(FileStorage("<tmp>/Data.fs", blob_dir="<tmp>/blobs"))``

``--small`` blobs of ``--small-size`` bytes (default 1,000 of 100 KB), ten per
transaction, and ``--big`` of ``--big-size`` (default 10 of 50 MB), one per transaction,
are written by one client, then read whole by a second client with an empty cache (every
byte crosses the network; embedded, by a second database object on the same files). Reported: seconds to write and to read each set, and ZEO's
time over amphora's (above 1: amphora is faster). A benchmark, not a test: nothing
asserts a time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

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


# -- through a server ------------------------------------------------------------------
def _served(kind: str, directory: str, synchronous: str) -> tuple[subprocess.Popen, int]:
    from server_bench import _env, _free_port, _wait_listening
    port = _free_port()
    if kind == "amphora-serve":
        command = [sys.executable, "-m", "amphora", "serve",
                   f"sqlite:///{directory}/bench.db?synchronous={synchronous}",
                   "--listen", f"127.0.0.1:{port}"]
    else:
        config = os.path.join(directory, "zeo.conf")
        with open(config, "w") as file:
            file.write(f"<zeo>\n  address 127.0.0.1:{port}\n</zeo>\n<filestorage 1>\n"
                       f"  path {directory}/Data.fs\n  blob-dir {directory}/blobs\n"
                       "</filestorage>\n")
        command = [sys.executable, "-c",
                   "import sys; from ZEO.runzeo import main; main(sys.argv[1:])",
                   "-C", config]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env())
    _wait_listening(port, proc, kind)
    return proc, port


def _client(kind: str, port: int, directory: str) -> Any:
    if kind == "amphora-serve":
        return amphora.open(f"amphora://127.0.0.1:{port}")
    import ZODB
    from ZEO.ClientStorage import ClientStorage
    cache = tempfile.mkdtemp(prefix="zeo-blob-cache-", dir=directory)
    return ZODB.DB(ClientStorage(("127.0.0.1", port), wait=True, shared_blob_dir=False,
                                 blob_dir=cache))


def _write_blobs(db: Any, key: str, count: int, size: int, per_transaction: int) -> None:
    import transaction
    from ZODB.blob import Blob
    block = os.urandom(min(size, 1 << 20))
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    root = conn.root()
    for first in range(0, count, per_transaction):
        manager.begin()
        for i in range(first, min(first + per_transaction, count)):
            blob = root[f"{key}{i}"] = Blob()
            with blob.open("w") as file:
                left = size
                while left:
                    left -= file.write(block[:left])
        manager.commit()
    conn.close()


def _read_blobs(db: Any, key: str, count: int, size: int) -> None:
    import transaction
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    manager.begin()
    root = conn.root()
    for i in range(count):
        read = 0
        with root[f"{key}{i}"].open("r") as file:
            while data := file.read(1 << 20):
                read += len(data)
        if read != size:
            raise AssertionError(f"blob {key}{i}: {read} bytes, not {size}")
    manager.abort()
    conn.close()


def _embedded(kind: str, directory: str, synchronous: str) -> Any:
    if kind == "amphora-sqlite":
        return amphora.open(f"sqlite:///{directory}/bench.db?synchronous={synchronous}")
    import ZODB
    from ZODB.FileStorage import FileStorage
    return ZODB.DB(FileStorage(os.path.join(directory, "Data.fs"),
                               blob_dir=os.path.join(directory, "blobs")))


def run_embedded(kind: str, sets: list[tuple[str, int, int, int]], synchronous: str
                 ) -> dict[str, tuple[float, float]]:
    """As :func:`run_served`, in this process: the reader a database opened anew."""
    times = {}
    with tempfile.TemporaryDirectory() as directory:
        writer = _embedded(kind, directory, synchronous)
        for key, count, size, per_transaction in sets:
            started = time.perf_counter()
            _write_blobs(writer, key, count, size, per_transaction)
            write = time.perf_counter() - started
            writer.close()
            reader = _embedded(kind, directory, synchronous)
            started = time.perf_counter()
            _read_blobs(reader, key, count, size)
            times[key] = (write, time.perf_counter() - started)
            writer = reader
        writer.close()
    return times


def run_served(kind: str, sets: list[tuple[str, int, int, int]], synchronous: str
               ) -> dict[str, tuple[float, float]]:
    """Seconds to write and to read each set ``(key, count, size, per transaction)``."""
    times = {}
    with tempfile.TemporaryDirectory() as directory:
        proc, port = _served(kind, directory, synchronous)
        try:
            writer = _client(kind, port, directory)
            for key, count, size, per_transaction in sets:
                started = time.perf_counter()
                _write_blobs(writer, key, count, size, per_transaction)
                write = time.perf_counter() - started
                reader = _client(kind, port, directory)  # an empty cache
                started = time.perf_counter()
                _read_blobs(reader, key, count, size)
                times[key] = (write, time.perf_counter() - started)
                reader.close()
            writer.close()
        finally:
            proc.terminate()
            proc.wait(60)
    return times


def main_served(args: argparse.Namespace) -> None:
    from importlib.metadata import version
    sets = [("small", args.small, args.small_size, PER_TRANSACTION),
            ("big", args.big, args.big_size, 1)]
    if args.embedded:
        kinds, run_kind = ("amphora-sqlite", "filestorage"), run_embedded
        print(f"blobs in one process: amphora {version('amphora')} (SQLite, synchronous="
              f"{args.synchronous}) vs ZODB {version('ZODB')} (FileStorage, blob_dir)",
              flush=True)
    else:
        kinds, run_kind = ("amphora-serve", "zeo"), run_served
        print(f"blobs through a server: amphora {version('amphora')} (SQLite, synchronous="
              f"{args.synchronous}) vs ZEO {version('ZEO')} (FileStorage, "
              "shared_blob_dir=False)", flush=True)
    results = {kind: run_kind(kind, sets, args.synchronous) for kind in kinds}
    other = kinds[1]
    print(f"{'set':<22} {'amphora write s':>15} {other + ' write s':>17} {'ratio':>6} "
          f"{'amphora read s':>15} {other + ' read s':>16} {'ratio':>6}")
    for key, count, size, _ in sets:
        (aw, ar), (zw, zr) = results[kinds[0]][key], results[other][key]
        label = f"{count:,} x {size:,} B"
        print(f"{label:<22} {aw:>15.2f} {zw:>17.2f} {zw / aw:>6.2f} "
              f"{ar:>15.2f} {zr:>16.2f} {zr / ar:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--sizes", default="100,10240,1048576,10485760")
    parser.add_argument("--served", action="store_true",
                        help="amphora serve against ZEO instead (see the module docstring)")
    parser.add_argument("--embedded", action="store_true",
                        help="amphora's SQLite storage against a FileStorage with a blob "
                             "directory, in one process (the sets of --served)")
    parser.add_argument("--small", type=int, default=1000, help="with --served: small blobs")
    parser.add_argument("--small-size", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=10, help="with --served: big blobs")
    parser.add_argument("--big-size", type=int, default=50_000_000)
    parser.add_argument("--synchronous", default="full", choices=["full", "normal", "off"],
                        help="with --served: the served SQLite file's synchronous")
    args = parser.parse_args()
    if args.served or args.embedded:
        main_served(args)
        return
    print(f"{'size':>10}  {'kind':<12} {'commit ms/value':>16} {'read ms/value':>14}")
    for size in [int(size) for size in args.sizes.split(",")]:
        count = args.count if size <= 1 << 20 else max(args.count // 10, PER_TRANSACTION)
        with tempfile.TemporaryDirectory() as directory:
            for kind in ("blob files", "in records"):
                write, read = run(kind, size, count, directory)
                print(f"{size:>10,}  {kind:<12} {write:>16.3f} {read:>14.3f}")


if __name__ == "__main__":
    main()
