"""The amphora server against ZEO: clients talking to a real server process over TCP.

Run from the repository root::

    .venv/bin/python benchmarks/server_bench.py                      # everything
    .venv/bin/python benchmarks/server_bench.py --objects 1000 --rounds 3 --markdown
    .venv/bin/python benchmarks/server_bench.py --only counter       # the hot spot only

Contenders (each round starts its own server process on a fresh directory, on
127.0.0.1, a free port; the benchmark process is the client):

==================  ===============================================================
``amphora-server``  ``amphora serve sqlite:///<tmp>/bench.db`` (the embedded default,
                    synchronous=full), clients ``amphora.open("amphora://...")``
``zeo-filestorage`` ``runzeo -f <tmp>/Data.fs`` (ZEO over FileStorage, its defaults),
                    clients ``ZODB.DB(ZEO.ClientStorage.ClientStorage(addr))``
                    (the reference for ratios)
==================  ===============================================================

Workloads:

``add``, ``update``, ``cold``, ``hot``
    the core of ``benchmarks/shootout.py`` (its ``Runner`` and workload code, imported),
    N objects per transaction, through the client. ``cold`` closes the client database
    and opens a new client connection to the same server before each sample, so nothing
    is cached in the benchmark process (ZEO's client cache is in memory, so it starts
    empty too); the server keeps whatever it caches, as a running server would.
``counter``
    a hot spot: 4 client processes each commit 100 transactions adding 1 to the root's
    one ``BTrees.Length.Length`` (conflicts are resolved by each server: amphora's from
    the records' opcodes, ZEO's by unpickling), retrying whatever conflict still escapes.
    Timed from the moment all four are connected and told to start until the last one
    finishes; reported as commits per second. The final count is read back and must be
    exactly 400. Run twice per server: with its clients' default and with the other
    ``server_sync`` (a round trip to the server at every transaction start: amphora's
    default, not ZEO's); the target compares transactions started alike.

Each round runs each contender once, in rotating order; reported: medians, and the
speedup vs ZEO (its time / amphora's time; for ``counter`` amphora's commits/s / ZEO's).
A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(SRC))

from shootout import Contender, Runner, fmt_ratio, median_ms  # noqa: E402

REFERENCE = "zeo-filestorage"
HEADLINE = "amphora-server"
CORE = ["add", "update", "cold", "hot"]
TARGETS = {"add": 2.0, "update": 2.0, "cold": 10.0, "counter": 3.0}
WRITERS, COMMITS = 4, 100


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stderr.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening")


# -- servers ---------------------------------------------------------------------------------
class Server:
    """One server process on a directory; ``open(cache_size)`` gives a client DB."""

    name = ""
    server_sync = False  # its clients' default: a round trip at each transaction start

    def __init__(self, path: str):
        self.path = path
        self.port = _free_port()
        self.proc = self.start()
        _wait_listening(self.port, self.proc, self.name)

    def start(self) -> subprocess.Popen:
        raise NotImplementedError

    def open(self, cache_size: int) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AmphoraServer(Server):
    name = "amphora-server"
    server_sync = True  # its clients' default

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "amphora", "serve", f"sqlite:///{self.path}/bench.db",
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())

    def uri(self) -> str:
        return f"amphora://127.0.0.1:{self.port}"

    def open(self, cache_size: int) -> Any:
        import amphora
        return amphora.open(self.uri(), cache_size=cache_size)


class ZEOServer(Server):
    name = "zeo-filestorage"
    server_sync = False

    def start(self) -> subprocess.Popen:
        code = "import sys; from ZEO.runzeo import main; main(sys.argv[1:])"
        return subprocess.Popen(
            [sys.executable, "-c", code, "-a", f"127.0.0.1:{self.port}",
             "-f", f"{self.path}/Data.fs"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())

    def open(self, cache_size: int) -> Any:
        import ZODB
        from ZEO.ClientStorage import ClientStorage
        return ZODB.DB(ClientStorage(("127.0.0.1", self.port), wait=True),
                       cache_size=cache_size)


SERVERS: dict[str, type[Server]] = {"amphora-server": AmphoraServer,
                                    "zeo-filestorage": ZEOServer}


def contender(kind: type[Server]) -> Contender:
    """A shootout contender whose database is a client of a server started per run."""
    running: dict[str, Server] = {}

    def create(path: str, cache_size: int) -> Any:
        server = running[path] = kind(path)
        return server.open(cache_size)

    def reopen(path: str, cache_size: int) -> Any:
        return running[path].open(cache_size)

    def cleanup(path: str) -> None:
        server = running.pop(path, None)
        if server is not None:
            server.stop()
    return Contender(kind.name, create, reopen,
                     cold="a new client (connection and caches) to the same server",
                     durability="the server's", cleanup=cleanup)


# -- the hot counter ------------------------------------------------------------------------
WORKER = r"""
import sys, time
import transaction
from ZODB.POSException import ConflictError
kind, address, commits = sys.argv[1], sys.argv[2], int(sys.argv[3])
server_sync = sys.argv[4] == "sync"
host, port = address.rsplit(":", 1)
if kind == "amphora-server":
    import amphora
    db = amphora.open(f"amphora://{address}?server_sync={server_sync}")
else:
    import ZODB
    from ZEO.ClientStorage import ClientStorage
    db = ZODB.DB(ClientStorage((host, int(port)), wait=True, server_sync=server_sync))
tm = transaction.TransactionManager()
conn = db.open(tm)
conn.root()["counter"]  # loaded: the timed part is the commits
print("ready", flush=True)
sys.stdin.readline()
retries = 0
for _ in range(commits):
    while True:
        try:
            tm.begin()
            conn.root()["counter"].change(1)
            tm.commit()
            break
        except ConflictError:
            tm.abort()
            retries += 1
print("done", retries, flush=True)
conn.close()
db.close()
"""


def run_counter(kind: type[Server], base: str, server_sync: bool) -> tuple[float, int]:
    """(seconds for WRITERS x COMMITS commits, retries); checks the final count.
    ``server_sync``: each transaction starts with a round trip to the server."""
    import transaction
    from BTrees.Length import Length

    path = tempfile.mkdtemp(prefix=f"{kind.name}-counter-", dir=base)
    server = kind(path)
    try:
        db = server.open(1000)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        conn.root()["counter"] = Length()
        tm.commit()
        conn.close()
        db.close()
        workers = [subprocess.Popen(
            [sys.executable, "-c", WORKER, kind.name, f"127.0.0.1:{server.port}",
             str(COMMITS), "sync" if server_sync else "nosync"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=_env()) for _ in range(WRITERS)]
        for worker in workers:
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {kind.name} counter worker did not start")
        started = time.perf_counter()
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        retries = 0
        for worker in workers:
            line = worker.stdout.readline().split()
            if not line or line[0] != "done":
                raise RuntimeError(f"a {kind.name} counter worker failed")
            retries += int(line[1])
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.wait(60)
        db = server.open(1000)
        conn = db.open(transaction.TransactionManager())
        count = conn.root()["counter"]()
        conn.close()
        db.close()
        if count != WRITERS * COMMITS:
            raise RuntimeError(f"{kind.name}: the counter is {count}, "
                               f"not {WRITERS * COMMITS}")
        return elapsed, retries
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", "-n", type=int, default=1000)
    parser.add_argument("--rounds", "-r", type=int, default=3)
    parser.add_argument("--loops", "-l", type=int, default=3)
    parser.add_argument("--only", default="",
                        help="comma-separated: core, counter, and/or contender names")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    kinds = [k for name, k in SERVERS.items() if not only & set(SERVERS) or name in only]
    parts = [x for x in ("core", "counter") if not only - set(SERVERS) or x in only]

    from importlib.metadata import version
    print(f"server_bench: {args.objects} objects/txn, {args.rounds} rounds x {args.loops} "
          f"loops; counter {WRITERS} processes x {COMMITS} commits; python "
          f"{sys.version.split()[0]}, {os.cpu_count()} cpus, ZODB {version('ZODB')}, "
          f"ZEO {version('ZEO')}", flush=True)
    base = tempfile.mkdtemp(prefix="amphora-server-bench-", dir=args.tmpdir)
    core: dict[str, dict[str, list[float]]] = {k.name: {w: [] for w in CORE} for k in kinds}
    modes = [(k, sync) for k in kinds for sync in (k.server_sync, not k.server_sync)]
    counter: dict[str, list[float]] = {_label(k, sync): [] for k, sync in modes}
    retries: dict[str, int] = {_label(k, sync): 0 for k, sync in modes}
    try:
        started = time.perf_counter()
        for r in range(args.rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for kind in order:
                if "core" in parts:
                    samples = Runner(contender(kind), args.objects, args.loops, base,
                                     args.seed + r).run()
                    for w in CORE:
                        core[kind.name][w].extend(samples[w])
                if "counter" in parts:
                    for sync in (kind.server_sync, not kind.server_sync):
                        os.sync()  # the core workloads' files written back first, not
                        # by kernel threads competing with the counter's processes
                        elapsed, tries = run_counter(kind, base, sync)
                        counter[_label(kind, sync)].append(elapsed)
                        retries[_label(kind, sync)] += tries
            print(f"  round {r + 1}/{args.rounds} done "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(core if "core" in parts else {}, counter if "counter" in parts else {},
           retries, args)
    return 0


def _label(kind: type[Server], server_sync: bool) -> str:
    """A counter contender: a server and its clients' ``server_sync``, named only when
    it is not the client's default."""
    if server_sync == kind.server_sync:
        return kind.name
    return f"{kind.name} server_sync={str(server_sync).lower()}"


def _same_sync(label: str) -> str:
    """The ZEO counter contender whose transactions start the way ``label``'s do."""
    syncs = {_label(kind, sync): sync for kind in SERVERS.values() for sync in (True, False)}
    return _label(ZEOServer, syncs[label])


def ratio(mine: list[float], reference: list[float]) -> float | None:
    if not mine or not reference:
        return None
    return statistics.median(reference) / statistics.median(mine)


def report(core: dict, counter: dict, retries: dict, args: argparse.Namespace) -> None:
    names = list(core or counter)
    rows: list[tuple[str, list[str]]] = []
    for w in CORE if core else []:
        print(f"\n{w}  ({args.objects} objects per transaction; median of "
              f"{len(core[names[0]][w])} samples)")
        cells = []
        for name in names:
            med = median_ms(core[name][w])
            r = ratio(core[name][w], core.get(REFERENCE, {}).get(w, []))
            print(f"  {name:<17} {med:9.2f} ms {args.objects / (med / 1000):11,.0f} objects/s "
                  f"  vs {REFERENCE}: {fmt_ratio(r)}")
            cells.append(f"{med:.2f} ms ({fmt_ratio(r)})")
        rows.append((w, cells))
    if counter:
        total = WRITERS * COMMITS
        print(f"\ncounter  ({WRITERS} processes x {COMMITS} commits on one Length; median "
              f"of {len(next(iter(counter.values())))} runs; final count checked = {total}; "
              f"server_sync: a round trip at each transaction start, amphora's default, "
              f"not ZEO's)")
        for name, samples in counter.items():
            med = statistics.median(samples)
            r = ratio(samples, counter.get(REFERENCE, []))
            same = _same_sync(name)
            line = (f"  {name:<34} {total / med:6.0f} commits/s  {med:5.2f} s  "
                    f"{retries[name]} retries  vs {REFERENCE}: {fmt_ratio(r)}")
            if name.startswith(HEADLINE) and same != REFERENCE and same in counter:
                line += f"  vs {same}: {fmt_ratio(ratio(samples, counter[same]))}"
            print(line)
        rows.append(("counter", [f"{total / statistics.median(counter[n]):.0f} commits/s "
                                 f"({fmt_ratio(ratio(counter[n], counter.get(REFERENCE, [])))})"
                                 for n in names if n in counter]))
    print()
    for w, goal in TARGETS.items():
        if w == "counter":  # each amphora mode against ZEO's transactions started alike
            for name in [n for n in counter if n.startswith(HEADLINE)] or [HEADLINE]:
                same = _same_sync(name)
                r = ratio(counter.get(name, []), counter.get(same, []))
                verdict = "n/a" if r is None else \
                    f"{fmt_ratio(r)} {'PASS' if r >= goal else 'MISS'}"
                print(f"target {name} counter >= {goal}x vs {same}: {verdict}")
            continue
        r = ratio(core.get(HEADLINE, {}).get(w) or [], core.get(REFERENCE, {}).get(w) or [])
        verdict = "n/a" if r is None else f"{fmt_ratio(r)} {'PASS' if r >= goal else 'MISS'}"
        print(f"target {HEADLINE} {w} >= {goal}x vs {REFERENCE}: {verdict}")
    if args.markdown:
        print("\n| workload | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for w, cells in rows:
            print(f"| {w} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
