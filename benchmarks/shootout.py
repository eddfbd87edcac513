"""A small zodbshootout-style benchmark: amphora against ZODB and RelStorage, one process.

Run from the repository root::

    .venv/bin/python benchmarks/shootout.py                  # all but PostgreSQL, all workloads
    .venv/bin/python benchmarks/shootout.py --objects 1000 --rounds 5 --json out.json
    .venv/bin/python benchmarks/shootout.py --only amphora-sqlite,zodb-filestorage,cold,hot
    .venv/bin/python benchmarks/shootout.py --profile prof/  # cProfile amphora-sqlite instead
    .venv/bin/python benchmarks/shootout.py --only amphora-postgresql,relstorage-postgresql

Every database runs the *same* workload code through the ZODB-shaped API they share
(``db.open(transaction_manager)``, ``conn.root()``, ``transaction`` commits,
``conn.cacheMinimize()``, ``conn.prefetch()``, ``db.close()``). Databases:

=====================  ============================================================
``amphora-memory``     ``amphora.open("memory://")``
``amphora-sqlite``     ``amphora.open("sqlite:///<tmp>/bench.db")`` (``synchronous=full``,
                       the default: fsync at every commit, as FileStorage)
``amphora-sqlite-normal`` the same with ``?synchronous=normal`` (the opt-in: fsync at
                       checkpoints only)
``amphora-encrypted-sqlite`` ``amphora.open("sqlite:///<tmp>/bench.db", keyring=k)``:
                       every record sealed (AES-256-GCM under per-commit subkeys,
                       padded), over the same storage as ``amphora-sqlite``
                       (``synchronous=full``); its
                       reference is ``amphora-sqlite``: encryption's cost
``zodb-mapping``       ``ZODB.DB(MappingStorage())``
``zodb-filestorage``   ``ZODB.DB(FileStorage("<tmp>/Data.fs"))`` (the reference for ratios)
``relstorage-sqlite``  ``ZODB.DB(RelStorage(Sqlite3Adapter(data_dir=<tmp>)))``,
                       keep_history=True, 50 MB local pickle cache, no persistent cache
=====================  ============================================================

With ``--postgresql`` (or when ``--only`` names one of them), two more, each round on a
new database of a private PostgreSQL server the script starts (with ``tests/pgserver.py``)
and stops; clients connect over TCP to 127.0.0.1; ``--pg-fsync on`` (the default) runs
the server with PostgreSQL's durable defaults, ``off`` as the tests' server:

=========================  ========================================================
``amphora-postgresql``     ``amphora.open("postgresql://postgres@127.0.0.1:<port>/<db>")``
``relstorage-postgresql``  ``ZODB.DB(RelStorage(PostgreSQLAdapter(dsn=...)))`` (psycopg2),
                           keep_history=True, 50 MB local pickle cache, no persistent
                           cache; the reference of the PostgreSQL targets
=========================  ========================================================

Without PostgreSQL's server programs (or psycopg / psycopg2) they are listed as
unavailable with the reason, like any database that fails.

Workloads, on N small persistent objects (``Item``: four attributes, about 300 bytes per
record) kept in an ``OOBTree`` under the root; each sample is one transaction over all N:

``add``            put N new objects into an empty OOBTree, one commit
``update``         change one attribute of all N, one commit
``warm``           write/read: connection A changes all N and commits; then connection B,
                   which had all N loaded, starts a new transaction and reads all N
                   (invalidation + reload of just-written objects; only B's part is timed)
``cold``           open a connection on a database with no cache of any kind in this process
                   and read all N (see COLD below)
``prefetch_cold``  like cold, but ``conn.prefetch(all N ghosts)`` before reading
``hot``            pickle caches emptied (``db.cacheMinimize()``), storage-level caches kept;
                   read N
``steamin``        all N already in the pickle cache; read N

Reads are timed as zodbshootout does: ``db.open()``, walk the tree from the root, add up
one attribute of every object, ``conn.close()`` (warm: ``tm.begin()`` then the walk).

COLD, per database: databases with files are closed and opened again on the same files
before each cold sample (not timed), so nothing cached in this process survives: for
amphora-sqlite and relstorage-sqlite that means new SQLite connections with empty page
caches and an empty amphora record cache / RelStorage local pickle cache; for FileStorage a new file
handle (its index is reread, untimed). The OS page cache stays warm for all of them.
The memory databases (amphora-memory, zodb-mapping) cannot be reopened: their cold is
``db.cacheMinimize()`` plus, for amphora, clearing the DB's shared record cache
(``db.records.clear()``); the storage itself is the data.

Before each sample the garbage collector runs; while timing it is off (as in ``timeit``;
``--gc`` leaves it on), because in one process the cost of a collection depends on every
database's leftovers, not on the database being timed.

Each round runs every database once, in rotating order (round-robin) so that noise from
other processes on the machine spreads over all of them; each workload is sampled
``--loops`` times per round. Reported: median over all samples, ms per N-object
transaction, objects/s, and speedup vs zodb-filestorage (its time / this time; > 1 means
faster than FileStorage). This is a benchmark, not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # the amphora of this checkout

import transaction  # noqa: E402
from BTrees.OOBTree import OOBTree  # noqa: E402
from persistent import Persistent  # noqa: E402

WORKLOADS = ["add", "update", "warm", "cold", "prefetch_cold", "hot", "steamin"]
REFERENCE = "zodb-filestorage"
HEADLINE_DB = "amphora-sqlite"
TARGETS = {"add": 2.0, "update": 2.0, "cold": 1.3, "hot": 0.9}
ENCRYPTED_DB = "amphora-encrypted-sqlite"
#: encryption's cost: amphora-encrypted-sqlite's time at most 1.25x amphora-sqlite's
ENCRYPTED_TARGETS = {"add": 1.25, "update": 1.25, "cold": 1.25}


class Item(Persistent):
    """The benchmark object: a few attributes, about 300 bytes per record."""

    def __init__(self, i: int, payload: bytes):
        self.name = f"item-{i:06d}"
        self.count = i
        self.attr = 1
        self.data = payload


PAYLOAD_SIZE = 200  # bytes; makes a record (class pickle + state) of about 300 bytes


def make_items(n: int, seed: int) -> list[Item]:
    rnd = random.Random(seed)
    return [Item(i, rnd.randbytes(PAYLOAD_SIZE)) for i in range(n)]


# -- databases -----------------------------------------------------------------------------
class Contender:
    """A named way to make a database in a directory, and to reopen it on the same files."""

    def __init__(self, name: str, create: Callable[[str, int], Any],
                 reopen: Callable[[str, int], Any] | None, cold: str, durability: str,
                 cleanup: Callable[[str], None] | None = None):
        self.name = name
        self._create = create
        self._reopen = reopen
        self._cleanup = cleanup     # what besides the directory goes (a server's database)
        self.cold = cold            # what "cold" means for it (printed, documented)
        self.durability = durability
        self.unavailable: str | None = None

    @property
    def reopenable(self) -> bool:
        return self._reopen is not None

    def create(self, path: str, cache_size: int) -> Any:
        return self._create(path, cache_size)

    def reopen(self, path: str, cache_size: int) -> Any:
        if self._reopen is None:
            raise RuntimeError(f"{self.name} cannot be reopened")
        return self._reopen(path, cache_size)

    def cleanup(self, path: str) -> None:
        if self._cleanup is not None:
            self._cleanup(path)


def _amphora_memory(path: str, cache_size: int) -> Any:
    import amphora
    return amphora.open("memory://", cache_size=cache_size)


def _amphora_sqlite(path: str, cache_size: int) -> Any:
    import amphora
    return amphora.open(f"sqlite:///{os.path.join(path, 'bench.db')}", cache_size=cache_size)


def _amphora_sqlite_normal(path: str, cache_size: int) -> Any:
    import amphora
    return amphora.open(f"sqlite:///{os.path.join(path, 'bench.db')}?synchronous=normal",
                        cache_size=cache_size)


def _amphora_encrypted_sqlite(path: str, cache_size: int) -> Any:
    """amphora-sqlite with every record sealed. The keyring is made once per database
    with Argon2id at its cheapest (unlocking is not timed; the data key is random either
    way) and kept unlocked, as an application does."""
    import amphora
    from amphora.crypto.keyring import KdfParameters
    keyring = _KEYRINGS.get(path)
    if keyring is None:
        keyring = _KEYRINGS[path] = amphora.Keyring.create(
            os.path.join(path, "bench.keyring"), "benchmark", KdfParameters(1, 1, 1024))
    return amphora.open(f"sqlite:///{os.path.join(path, 'bench.db')}", keyring=keyring,
                        cache_size=cache_size)


_KEYRINGS: dict[str, Any] = {}  # the unlocked keyring of each database directory


def _zodb_mapping(path: str, cache_size: int) -> Any:
    import ZODB
    from ZODB.MappingStorage import MappingStorage
    return ZODB.DB(MappingStorage(), cache_size=cache_size)


def _zodb_filestorage(path: str, cache_size: int) -> Any:
    import ZODB
    from ZODB.FileStorage import FileStorage
    return ZODB.DB(FileStorage(os.path.join(path, "Data.fs")), cache_size=cache_size)


RELSTORAGE_CACHE_MB = 50


def _relstorage_sqlite(path: str, cache_size: int) -> Any:
    import ZODB
    from relstorage.adapters.sqlite.adapter import Sqlite3Adapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage
    options = Options(keep_history=True, cache_local_mb=RELSTORAGE_CACHE_MB,
                      cache_local_dir=None)
    adapter = Sqlite3Adapter(data_dir=os.path.join(path, "relstorage"), pragmas={},
                             options=options)
    return ZODB.DB(RelStorage(adapter, options=options), cache_size=cache_size)


# -- PostgreSQL ------------------------------------------------------------------------------
_TESTS = Path(__file__).resolve().parents[1] / "tests"
PG_REFERENCE = "relstorage-postgresql"
PG_CONTENDERS = ("amphora-postgresql", PG_REFERENCE)
PG_TARGETS = {"add": 1.5, "update": 1.5, "cold": 5.0}


class PostgreSQLServer:
    """The private PostgreSQL server the PostgreSQL contenders share, started on first use
    by the tests' helper (``tests/pgserver.py``: ``initdb`` in a temporary directory, a free
    port, trust authentication), and one database on it per contender and round.

    The tests' server runs with ``fsync=off``, ``synchronous_commit=off`` and
    ``full_page_writes=off``. With ``durable`` (the default) it is restarted with
    PostgreSQL's defaults instead (all three on: a commit returns after its WAL is flushed
    to disk), the same for every contender. Clients connect over TCP to 127.0.0.1.
    """

    def __init__(self, durable: bool = True):
        self.durable = durable
        self._server: Any = None
        self._failure: str | None = None

    @property
    def settings(self) -> str:
        return ("fsync=on, synchronous_commit=on, full_page_writes=on (PostgreSQL's defaults)"
                if self.durable else
                "fsync=off, synchronous_commit=off, full_page_writes=off (the tests' server)")

    def server(self) -> Any:
        if self._failure is not None:
            raise RuntimeError(self._failure)
        if self._server is None:
            try:
                self._server = self._start()
            except Exception as exc:  # noqa: BLE001 - becomes every contender's reason
                self._failure = f"no private PostgreSQL server: {exc}".splitlines()[0]
                raise RuntimeError(self._failure) from exc
        return self._server

    def _start(self) -> Any:
        if str(_TESTS) not in sys.path:
            sys.path.insert(0, str(_TESTS))
        import pgserver
        bindir = pgserver.find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server programs (initdb, pg_ctl) in PATH or "
                               "/usr/lib/postgresql/*/bin")
        server = pgserver.PostgresServer(bindir)
        try:
            server.start()
            if self.durable:  # the same server, restarted without the tests' shortcuts
                server._run("pg_ctl", "-D", str(server.data), "-l", str(server.log), "-o",
                            f"-p {server.port} -c listen_addresses=127.0.0.1 "
                            f"-c unix_socket_directories={server.socket_dir} "
                            "-c max_connections=300 -c shared_buffers=64MB",
                            "-w", "-t", "60", "restart")
                with server.connect("postgres") as conn:
                    got = conn.execute("SELECT current_setting('fsync'),"
                                       " current_setting('synchronous_commit')").fetchone()
                if got != ("on", "on"):
                    raise RuntimeError(f"fsync, synchronous_commit are {got} after restart")
        except BaseException:
            server.stop()
            raise
        return server

    def version(self) -> str | None:
        if self._server is None:
            return None
        with self._server.connect("postgres") as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @staticmethod
    def database(path: str) -> str:
        """The database of a contender's temporary directory."""
        return "bench_" + re.sub(r"[^a-z0-9_]", "_", os.path.basename(path).lower())

    def create(self, path: str) -> str:
        name = self.database(path)
        with self.server().connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def drop(self, path: str) -> None:
        if self._server is not None:
            with self._server.connect("postgres") as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.database(path)} WITH (FORCE)")

    def uri(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server().port}/{name}"

    def dsn(self, name: str) -> str:
        return f"host=127.0.0.1 port={self.server().port} user=postgres dbname={name}"


def _amphora_postgresql(pg: PostgreSQLServer, create: bool) -> Callable[[str, int], Any]:
    def open_db(path: str, cache_size: int) -> Any:
        import amphora
        name = pg.create(path) if create else pg.database(path)
        return amphora.open(pg.uri(name), cache_size=cache_size)
    return open_db


def _relstorage_postgresql(pg: PostgreSQLServer, create: bool) -> Callable[[str, int], Any]:
    def open_db(path: str, cache_size: int) -> Any:
        import ZODB
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage
        name = pg.create(path) if create else pg.database(path)
        options = Options(keep_history=True, cache_local_mb=RELSTORAGE_CACHE_MB,
                          cache_local_dir=None)
        adapter = PostgreSQLAdapter(dsn=pg.dsn(name), options=options)
        return ZODB.DB(RelStorage(adapter, options=options), cache_size=cache_size)
    return open_db


def contenders(pg: PostgreSQLServer | None = None) -> list[Contender]:
    pg = pg if pg is not None else PostgreSQLServer()
    reopened = "closed and reopened on the same files before each sample"
    return [
        Contender("amphora-memory", _amphora_memory, None,
                  "db.cacheMinimize() + db.records.clear() (a memory storage cannot be "
                  "reopened)", "none (memory)"),
        Contender("amphora-sqlite", _amphora_sqlite, _amphora_sqlite,
                  f"DB {reopened}: new SQLite connection and page cache, empty record cache",
                  "WAL, synchronous=full (the storage's default): fsync at every commit, "
                  "as FileStorage"),
        Contender("amphora-sqlite-normal", _amphora_sqlite_normal, _amphora_sqlite_normal,
                  f"DB {reopened}: as amphora-sqlite",
                  "WAL, synchronous=normal (opt-in): fsync at checkpoints only"),
        Contender(ENCRYPTED_DB, _amphora_encrypted_sqlite, _amphora_encrypted_sqlite,
                  f"DB {reopened}: as amphora-sqlite (the keyring stays unlocked)",
                  "as amphora-sqlite; every record sealed (AES-256-GCM, per-commit subkeys)"),
        Contender("zodb-mapping", _zodb_mapping, None,
                  "db.cacheMinimize() (a memory storage cannot be reopened; no storage cache)",
                  "none (memory)"),
        Contender("zodb-filestorage", _zodb_filestorage, _zodb_filestorage,
                  f"DB {reopened}: new file handle (FileStorage has no data cache)",
                  "fsync at every commit"),
        Contender("relstorage-sqlite", _relstorage_sqlite, _relstorage_sqlite,
                  f"DB {reopened}: new SQLite connections, empty local pickle cache "
                  "(no cache_local_dir, so no persistent cache)",
                  "WAL, synchronous=NORMAL (RelStorage default)"),
        Contender("amphora-postgresql", _amphora_postgresql(pg, True),
                  _amphora_postgresql(pg, False),
                  "DB closed and reopened on the same database before each sample: new "
                  "connections, empty record cache (the server's shared buffers stay warm)",
                  pg.settings, cleanup=pg.drop),
        Contender(PG_REFERENCE, _relstorage_postgresql(pg, True),
                  _relstorage_postgresql(pg, False),
                  "DB closed and reopened on the same database before each sample: new "
                  "connections, empty local pickle cache (no cache_local_dir)",
                  pg.settings, cleanup=pg.drop),
    ]


def check_available(c: Contender, base: str) -> None:
    """Make, use and (if it has files) reopen the database once; record why not if it fails."""
    path = tempfile.mkdtemp(prefix=f"check-{c.name}-", dir=base)
    try:
        db = c.create(path, 1000)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        conn.root()["probe"] = Item(0, b"x")
        tm.commit()
        conn.close()
        if c.reopenable:
            db.close()
            db = c.reopen(path, 1000)
            conn = db.open(tm)
            assert conn.root()["probe"].name == "item-000000"
            conn.close()
        db.close()
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        c.unavailable = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        try:
            c.cleanup(path)
        except Exception:  # noqa: BLE001 - the check's own error, if any, says more
            pass
        shutil.rmtree(path, ignore_errors=True)


# -- workloads -----------------------------------------------------------------------------
def read_tree(conn: Any, key: str) -> int:
    total = 0
    for obj in conn.root()[key].values():
        total += obj.attr
    return total


class Runner:
    """Runs every workload once per loop on one fresh database; collects samples."""

    def __init__(self, c: Contender, n: int, loops: int, base: str, seed: int,
                 profiles: dict[str, cProfile.Profile] | None = None, keep_gc: bool = False):
        self.c = c
        self.keep_gc = keep_gc
        self.n = n
        self.loops = loops
        self.base = base
        self.seed = seed
        self.cache_size = 2 * n + 1000   # ZODB's default (400) would evict during reads
        self.samples: dict[str, list[float]] = {w: [] for w in WORKLOADS}
        self.profiles = profiles
        self.expected_attr = 1

    # timing -------------------------------------------------------------------------
    def _timed(self, workload: str, func: Callable[[], Any]) -> Any:
        gc.collect()
        if not self.keep_gc:
            gc.disable()  # as timeit does: a collection's cost depends on the whole heap
        prof = self.profiles.get(workload) if self.profiles is not None else None
        if prof is not None:
            prof.enable()
        try:
            t0 = time.perf_counter()
            result = func()
            elapsed = time.perf_counter() - t0
        finally:
            if prof is not None:
                prof.disable()
            gc.enable()
        self.samples[workload].append(elapsed)
        return result

    def _check(self, total: int, what: str) -> None:
        if total != self.n * self.expected_attr:
            raise RuntimeError(f"{self.c.name} {what}: read {total}, "
                               f"expected {self.n * self.expected_attr}")

    def _read(self, workload: str, db: Any) -> None:
        tm = transaction.TransactionManager()

        def read() -> int:
            conn = db.open(tm)
            total = read_tree(conn, self.key)
            conn.close()
            return total
        self._check(self._timed(workload, read), workload)

    # the sequence ---------------------------------------------------------------------
    def run(self) -> dict[str, list[float]]:
        path = tempfile.mkdtemp(prefix=f"{self.c.name}-", dir=self.base)
        db = self.c.create(path, self.cache_size)
        try:
            db = self._run(db, path)
        finally:
            db.close()
            self.c.cleanup(path)
            shutil.rmtree(path, ignore_errors=True)
        return self.samples

    def _run(self, db: Any, path: str) -> Any:
        n = self.n
        tm = transaction.TransactionManager()

        # add: N new objects into an empty tree, one commit
        for k in range(self.loops):
            self.key = f"tree{k}"
            conn = db.open(tm)
            conn.root()[self.key] = OOBTree()
            tm.commit()
            conn.close()
            items = make_items(n, self.seed + k)

            def add() -> None:
                conn = db.open(tm)
                tree = conn.root()[self.key]
                for i, item in enumerate(items):
                    tree[i] = item
                tm.commit()
                conn.close()
            self._timed("add", add)
            del items

        # update: change all N, one commit
        for _ in range(self.loops):
            def update() -> None:
                conn = db.open(tm)
                for obj in conn.root()[self.key].values():
                    obj.attr += 1
                tm.commit()
                conn.close()
            self._timed("update", update)
            self.expected_attr += 1

        # warm: B has all N loaded; A changes them and commits; B begins and reads them
        tm_a, tm_b = transaction.TransactionManager(), transaction.TransactionManager()
        reader = db.open(tm_b)
        writer = db.open(tm_a)
        self._check(read_tree(reader, self.key), "warm (before)")
        for _ in range(self.loops):
            for obj in writer.root()[self.key].values():
                obj.attr += 1
            tm_a.commit()
            self.expected_attr += 1

            def warm() -> int:
                tm_b.begin()
                return read_tree(reader, self.key)
            self._check(self._timed("warm", warm), "warm")
        tm_a.abort()
        tm_b.abort()
        writer.close()
        reader.close()

        # hot: pickle caches emptied, storage caches kept. db.cacheMinimize() empties every
        # pooled connection's cache (ZODB's pool hands out the connection with the most
        # non-ghost objects, so minimizing only one would not be enough)
        for _ in range(self.loops):
            db.cacheMinimize()
            self._read("hot", db)

        # steamin: everything already in the pickle cache
        conn = db.open(tm)
        self._check(read_tree(conn, self.key), "steamin (before)")
        conn.close()
        for _ in range(self.loops):
            self._read("steamin", db)

        # cold and prefetch_cold: nothing cached in this process
        for workload in ("cold", "prefetch_cold"):
            for _ in range(self.loops):
                db = self._make_cold(db, path)
                if workload == "cold":
                    self._read("cold", db)
                    continue

                def prefetch_cold() -> int:
                    conn = db.open(tm)
                    objs = list(conn.root()[self.key].values())
                    conn.prefetch(objs)
                    total = 0
                    for obj in objs:
                        total += obj.attr
                    del objs
                    conn.close()
                    return total
                self._check(self._timed("prefetch_cold", prefetch_cold), "prefetch_cold")
        return db

    def _make_cold(self, db: Any, path: str) -> Any:
        if self.c.reopenable:
            db.close()
            gc.collect()
            return self.c.reopen(path, self.cache_size)
        db.cacheMinimize()
        records = getattr(db, "records", None)  # amphora's shared record cache
        if records is not None:
            records.clear()
        return db


# -- reporting -----------------------------------------------------------------------------
def median_ms(samples: list[float]) -> float | None:
    return statistics.median(samples) * 1000 if samples else None


def ratio(results: dict, db: str, workload: str, reference: str = REFERENCE) -> float | None:
    ref = results.get(reference, {}).get(workload)
    mine = results.get(db, {}).get(workload)
    if not ref or not mine:
        return None
    return statistics.median(ref) / statistics.median(mine)


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def print_report(results: dict, cs: list[Contender], workloads: list[str], n: int,
                 out: Any = sys.stdout) -> None:
    w = max(len(c.name) for c in cs) + 2
    pg_ref = any(c.name == PG_REFERENCE and not c.unavailable for c in cs)
    for workload in workloads:
        counts = {len(results.get(c.name, {}).get(workload, [])) for c in cs if not c.unavailable}
        print(f"\n{workload}  ({n} objects per transaction; ms = median of "
              f"{'/'.join(map(str, sorted(counts)))} samples)", file=out)
        print(f"  {'database':<{w}} {'ms/txn':>9} {'objects/s':>11} {'min ms':>9} "
              f"{'vs ' + REFERENCE:>22}" + (f"{'vs ' + PG_REFERENCE:>26}" if pg_ref else ""),
              file=out)
        for c in cs:
            if c.unavailable:
                print(f"  {c.name:<{w}} unavailable: {c.unavailable}", file=out)
                continue
            samples = results.get(c.name, {}).get(workload)
            if not samples:
                continue
            med = median_ms(samples)
            pg_cell = (f"{fmt_ratio(ratio(results, c.name, workload, PG_REFERENCE)):>26}"
                       if pg_ref else "")
            print(f"  {c.name:<{w}} {med:9.2f} {n / (med / 1000):11,.0f} "
                  f"{min(samples) * 1000:9.2f} {fmt_ratio(ratio(results, c.name, workload)):>22}"
                  + pg_cell, file=out)


def headline(results: dict, cs: list[Contender], workloads: list[str]) -> list[str]:
    lines = []
    by_name = {c.name: c for c in cs}
    pairs = [(name, REFERENCE) for name in ("amphora-sqlite", "amphora-memory",
                                             "relstorage-sqlite", "zodb-mapping",
                                             *PG_CONTENDERS)]
    pairs.append(("amphora-postgresql", PG_REFERENCE))
    pairs.append((ENCRYPTED_DB, HEADLINE_DB))
    for name, reference in pairs:
        c = by_name.get(name)
        if c is None or reference not in by_name:
            continue
        if c.unavailable:
            lines.append(f"{name} vs {reference}: unavailable ({c.unavailable})")
            continue
        parts = [f"{w} {fmt_ratio(ratio(results, name, w, reference))}" for w in workloads]
        lines.append(f"{name} vs {reference}: " + ", ".join(parts))
    return lines


def target_lines(results: dict, cs: list[Contender]) -> list[str]:
    by_name = {c.name: c for c in cs}
    lines = []
    for db, reference, targets in ((HEADLINE_DB, REFERENCE, TARGETS),
                                   ("amphora-postgresql", PG_REFERENCE, PG_TARGETS)):
        c, ref = by_name.get(db), by_name.get(reference)
        if db == "amphora-postgresql" and c is None:
            continue  # the PostgreSQL contenders were not asked for
        for workload, goal in targets.items():
            r = (ratio(results, db, workload, reference)
                 if c and not c.unavailable and ref and not ref.unavailable else None)
            verdict = "" if r is None else ("PASS" if r >= goal else "MISS")
            missing = next((x for x in (c, ref) if x is not None and x.unavailable), None)
            why = "" if r is not None else (
                f" ({missing.name} unavailable: {missing.unavailable})" if missing
                else " (not measured)")
            result = f"n/a{why}" if r is None else f"{fmt_ratio(r)} {verdict}"
            lines.append(f"target {db} {workload} >= {goal}x vs {reference}: {result}")
    c, ref = by_name.get(ENCRYPTED_DB), by_name.get(HEADLINE_DB)
    if c is not None and ref is not None:
        for workload, most in ENCRYPTED_TARGETS.items():
            r = (ratio(results, HEADLINE_DB, workload, ENCRYPTED_DB)
                 if not c.unavailable and not ref.unavailable else None)
            result = "n/a" if r is None else (
                f"{r:.2f}x ({r - 1:+.0%}) {'PASS' if r <= most else 'MISS'}")
            lines.append(f"target {ENCRYPTED_DB} {workload} <= {most}x the time of "
                         f"{HEADLINE_DB}: {result}")
    return lines


def markdown_table(results: dict, cs: list[Contender], workloads: list[str],
                   reference: str = REFERENCE) -> str:
    """One table, workloads by databases: ``median ms (speedup vs the reference)``."""
    names = [c.name for c in cs]
    lines = ["| workload (ms per txn, speedup) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for w in workloads:
        cells = []
        for c in cs:
            samples = results.get(c.name, {}).get(w)
            if c.unavailable or not samples:
                cells.append("unavailable" if c.unavailable else "")
            else:
                cells.append(f"{median_ms(samples):.2f} "
                             f"({fmt_ratio(ratio(results, c.name, w, reference))})")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version
    versions = {}
    for dist in ("amphora", "ZODB", "RelStorage", "persistent", "BTrees", "transaction",
                 "zodbpickle", "psycopg", "psycopg2-binary"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version, "versions": versions}


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [c.name for c in contenders()]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", "-n", type=int, default=1000,
                   help="objects per transaction (default 1000)")
    p.add_argument("--rounds", "-r", type=int, default=5,
                   help="rounds; every database runs once per round (default 5)")
    p.add_argument("--loops", "-l", type=int, default=5,
                   help="samples of each workload per database per round (default 5)")
    p.add_argument("--only", default="",
                   help="comma-separated database and/or workload names to run; databases: "
                        f"{', '.join(names)}; workloads: {', '.join(WORKLOADS)}")
    p.add_argument("--json", metavar="FILE", help="write raw samples and summary as JSON")
    p.add_argument("--markdown", action="store_true",
                   help="also print one Markdown table of all results (for docs/benchmarks.md)")
    p.add_argument("--tmpdir", default=None,
                   help="where the temporary databases go (default: the system temp dir)")
    p.add_argument("--profile", metavar="DIR",
                   help="instead of timing, cProfile one round of each workload for the "
                        f"selected databases (default {HEADLINE_DB}); writes DIR/<db>-<workload>"
                        ".prof and prints the top functions")
    p.add_argument("--gc", action="store_true",
                   help="leave the garbage collector on during timed sections (default: "
                        "collect before each sample, then disable it while timing)")
    p.add_argument("--postgresql", action="store_true",
                   help="also run the PostgreSQL contenders (amphora-postgresql, "
                        f"{PG_REFERENCE}) on a private server started for the run; naming "
                        "one in --only does the same")
    p.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                   help="the private server's durability: on (default): fsync, "
                        "synchronous_commit and full_page_writes on, PostgreSQL's defaults; "
                        "off: all three off, as the tests' server")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    args.dbs, args.workloads = [], []
    for item in filter(None, (s.strip() for s in args.only.split(","))):
        if item in names:
            args.dbs.append(item)
        elif item in WORKLOADS:
            args.workloads.append(item)
        else:
            p.error(f"--only: unknown name {item!r}; databases: {', '.join(names)}; "
                    f"workloads: {', '.join(WORKLOADS)}")
    if not args.workloads:
        args.workloads = list(WORKLOADS)
    else:
        args.workloads = [w for w in WORKLOADS if w in args.workloads]
    return args


def run_profile(args: argparse.Namespace, cs: list[Contender], base: str) -> None:
    os.makedirs(args.profile, exist_ok=True)
    for c in cs:
        if c.unavailable:
            print(f"{c.name}: unavailable: {c.unavailable}")
            continue
        profiles = {w: cProfile.Profile() for w in args.workloads}
        Runner(c, args.objects, args.loops, base, args.seed, profiles).run()
        for w, prof in profiles.items():
            fname = os.path.join(args.profile, f"{c.name}-{w}.prof")
            prof.dump_stats(fname)
            print(f"\n==== {c.name} {w} ({args.loops} x {args.objects} objects) -> {fname}")
            for title, sort, restrict in (("all code, by own time", "tottime", 18),
                                          ("amphora's code, by cumulative time", "cumulative",
                                           r"/amphora/")):
                buf = io.StringIO()
                stats = pstats.Stats(prof, stream=buf)
                stats.sort_stats(sort)
                if isinstance(restrict, str):
                    stats.print_stats(restrict, 14)
                else:
                    stats.print_stats(restrict)
                text = buf.getvalue()
                print(f"-- {title}")
                print(text[text.find("   ncalls"):].rstrip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pg = PostgreSQLServer(durable=args.pg_fsync == "on")
    cs = contenders(pg)
    if args.dbs:
        cs = [c for c in cs if c.name in args.dbs]
    elif args.profile:
        cs = [c for c in cs if c.name == HEADLINE_DB]
    elif not args.postgresql:
        cs = [c for c in cs if c.name not in PG_CONTENDERS]
    base = tempfile.mkdtemp(prefix="amphora-shootout-", dir=args.tmpdir)
    try:
        for c in cs:
            check_available(c, base)
        if args.profile:
            run_profile(args, cs, base)
            return 0
        return run_benchmark(args, cs, base, pg)
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, cs: list[Contender], base: str,
                  pg: PostgreSQLServer) -> int:
    info = machine_info()
    info["postgresql"] = pg.version()
    print(f"shootout: {args.objects} objects/txn, {args.rounds} rounds x {args.loops} loops, "
          f"python {info['python']}, {info['cpus']} cpus, sqlite {info['sqlite']}, "
          f"ZODB {info['versions']['ZODB']}, RelStorage {info['versions']['RelStorage']}")
    if info["postgresql"]:
        print(f"  postgresql {info['postgresql']} (private server, {pg.settings}), "
              f"psycopg {info['versions']['psycopg']}, "
              f"psycopg2-binary {info['versions']['psycopg2-binary']}")
    for c in cs:
        state = f"UNAVAILABLE: {c.unavailable}" if c.unavailable else f"cold = {c.cold}"
        print(f"  {c.name:<21} {state}")
    live = [c for c in cs if not c.unavailable]
    results: dict[str, dict[str, list[float]]] = {c.name: {w: [] for w in WORKLOADS} for c in live}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for r in range(args.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for c in order:
            if c.name in errors:
                continue
            try:
                samples = Runner(c, args.objects, args.loops, base, args.seed + r,
                                 keep_gc=args.gc).run()
            except Exception as exc:  # noqa: BLE001 - reported below and in the table
                errors[c.name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                c.unavailable = f"failed during round {r + 1}: {errors[c.name]}"
                traceback.print_exc()
                continue
            for w, values in samples.items():
                results[c.name][w].extend(values)
        print(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)",
              flush=True)
    for name in errors:
        results.pop(name, None)
    # every workload runs (each prepares the next); report only the selected ones
    results = {name: {w: s for w, s in per.items() if w in args.workloads}
               for name, per in results.items()}

    print_report(results, cs, args.workloads, args.objects)
    print()
    heads = headline(results, cs, args.workloads)
    targets = target_lines(results, cs)
    for line in heads + targets:
        print(line)
    if args.markdown:
        print()
        print(markdown_table(results, cs, args.workloads))
        pair = [c for c in cs if c.name in (HEADLINE_DB, ENCRYPTED_DB)]
        if len(pair) == 2:  # encryption's cost: speedups below 1, vs amphora-sqlite
            print()
            print(markdown_table(results, pair, args.workloads, HEADLINE_DB))
        pg_cs = [c for c in cs if c.name in PG_CONTENDERS]
        if any(c.name == PG_REFERENCE for c in pg_cs):
            print()
            print(markdown_table(results, pg_cs, args.workloads, PG_REFERENCE))
    print(f"total {time.perf_counter() - started:.0f} s")

    if args.json:
        summary = {
            name: {w: {"median_ms": median_ms(s), "min_ms": min(s) * 1000 if s else None,
                       "objects_per_s": args.objects / statistics.median(s) if s else None,
                       f"speedup_vs_{REFERENCE}": ratio(results, name, w),
                       f"speedup_vs_{PG_REFERENCE}": ratio(results, name, w, PG_REFERENCE)}
                   for w, s in per.items() if w in args.workloads}
            for name, per in results.items()}
        doc = {"machine": info, "objects": args.objects, "rounds": args.rounds,
               "loops": args.loops, "workloads": args.workloads, "reference": REFERENCE,
               "databases": {c.name: {"cold": c.cold, "durability": c.durability,
                                      "unavailable": c.unavailable} for c in cs},
               "samples_s": {name: {w: s for w, s in per.items() if w in args.workloads}
                             for name, per in results.items()},
               "summary": summary, "headline": heads, "targets": targets,
               "seconds": time.perf_counter() - started}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
