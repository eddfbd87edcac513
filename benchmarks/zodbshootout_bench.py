"""zodbshootout itself, over ``ZODB.DB``: amphora's storages as a ZODB application plugs
them in (a ZConfig file with ``%import amphora`` and an ``<amphora>`` section).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: zodbshootout, ``pyperf<2``,
RelStorage). Run from the repository root::

    .venv/bin/python benchmarks/zodbshootout_bench.py                 # about 4 minutes
    .venv/bin/python benchmarks/zodbshootout_bench.py --values 5 --json out.json
    .venv/bin/python benchmarks/zodbshootout_bench.py --only amphora-sqlite,filestorage
    .venv/bin/python benchmarks/zodbshootout_bench.py --only postgresql   # a pair (or: served)
    .venv/bin/python benchmarks/zodbshootout_bench.py --profile prof/  # cProfile per workload

The script writes one ZConfig file naming every database (each in a new temporary
directory), runs ``zodbshootout`` once over it (one process, ``--object-counts``
objects, ``--values`` timed values per workload after ``--warmups``; zodbshootout's
``MappingStorage`` too, the floor: ``ZODB.DB``'s own cost), reads its JSON
results, and prints the median time of each workload per database and the ratios the
targets are stated in: FileStorage's time over amphora's (``> 1``: amphora is faster), and
the same against RelStorage.

Databases (``DATABASES``; each a function giving its ZConfig section):

=========================  ============================================================
``filestorage``            ``<filestorage>``: the reference of the ratios
``relstorage-sqlite``      ``<relstorage>`` over ``<sqlite3>``, history-preserving, its
                           default local cache
``amphora-sqlite``         ``<amphora> uri sqlite:///...`` (history-preserving, durable)
``amphora-postgresql``     ``<amphora> uri postgresql://...``: a database of its own on a
                           private PostgreSQL server the script starts (``shootout.py``'s:
                           ``tests/pgserver.py``, restarted with PostgreSQL's durable
                           defaults), history-preserving
``relstorage-postgresql``  ``<relstorage>`` over ``<postgresql>`` (psycopg2), another
                           database on the same server, history-preserving, its default
                           local cache
``amphora-serve``          ``<amphora> uri amphora://...``: a client of an ``amphora
                           serve sqlite:///...`` process (``server_bench.py``'s)
``zeo``                    ``<zeoclient>``: a client of a ``runzeo`` process over a
                           FileStorage (``server_bench.py``'s), ZEO's defaults
=========================  ============================================================

A database is a name and a function of the run's temporary directory and its
:class:`Services` (the servers, started on first use) returning ``(section, imports)``;
a pair (``PAIRS``) names the amphora database and the database it is compared with.
``--only postgresql`` and ``--only served`` name a pair.

Workloads (zodbshootout's): ``add`` (1000 new objects in one commit), ``update`` (change
all, one commit), ``cold`` (a new ``ZODB.DB`` and storage, read all), ``warm`` (write all
then read them back, both timed), ``hot`` (pickle cache emptied, storage caches kept).
This is a benchmark, not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shootout, server_bench

WORKLOADS = ["add", "update", "cold", "warm", "hot"]
REFERENCE = "filestorage"
#: zodbshootout's own in-memory database (``--include-mapping``): what ZODB.DB costs over a
#: storage that costs nothing, the floor under every storage's time
FLOOR = "MappingStorage"
#: amphora SQLite's targets against FileStorage (its time over amphora's)
TARGETS = {"add": 2.0, "update": 2.0, "cold": 1.5, "warm": 1.5, "hot": 1.2}
#: zodbshootout's benchmark names (after "<database>: ") for the workloads, of N objects
_NAMES = {"add": "add {n} objects", "update": "update {n} objects",
          "cold": "read {n} cold objects", "warm": "write/read {n} objects",
          "hot": "read {n} hot objects", "steamin": "read {n} steamin objects",
          "prefetch_cold": "read {n} cold prefeteched objects"}


class Services:
    """The servers some databases need, each started on first use in the run's temporary
    directory; :meth:`stop` stops them all."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self._postgresql: Any = None
        self._servers: list[Any] = []

    def postgresql_database(self, name: str) -> tuple[str, str]:
        """``(uri, dsn)`` of a new database ``name`` on the private PostgreSQL server."""
        from shootout import PostgreSQLServer
        if self._postgresql is None:
            self._postgresql = PostgreSQLServer(durable=True)
        path = str(self.tmp / name)
        self._postgresql.drop(path)
        database = self._postgresql.create(path)
        return self._postgresql.uri(database), self._postgresql.dsn(database)

    def server(self, kind: str) -> Any:
        """A running server of ``server_bench.SERVERS[kind]`` on a directory of its own."""
        from server_bench import SERVERS
        directory = self.tmp / kind
        directory.mkdir(exist_ok=True)
        server = SERVERS[kind](str(directory))
        self._servers.append(server)
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        if self._postgresql is not None:
            self._postgresql.stop()


def filestorage(tmp: Path, services: Services) -> tuple[str, list[str]]:
    return (f"<filestorage>\n  path {tmp / 'fs' / 'Data.fs'}\n</filestorage>", [])


def relstorage_sqlite(tmp: Path, services: Services) -> tuple[str, list[str]]:
    return ("<relstorage>\n  keep-history true\n  <sqlite3>\n"
            f"    data-dir {tmp / 'relstorage'}\n  </sqlite3>\n</relstorage>", ["relstorage"])


def amphora_sqlite(tmp: Path, services: Services) -> tuple[str, list[str]]:
    return (f"<amphora>\n  uri sqlite:///{tmp / 'amphora' / 'data.db'}\n</amphora>", ["amphora"])


def amphora_postgresql(tmp: Path, services: Services) -> tuple[str, list[str]]:
    uri, _ = services.postgresql_database("amphora")
    return f"<amphora>\n  uri {uri}\n</amphora>", ["amphora"]


def relstorage_postgresql(tmp: Path, services: Services) -> tuple[str, list[str]]:
    _, dsn = services.postgresql_database("relstorage")
    return ("<relstorage>\n  keep-history true\n  <postgresql>\n"
            f"    dsn {dsn}\n  </postgresql>\n</relstorage>", ["relstorage"])


def amphora_serve(tmp: Path, services: Services) -> tuple[str, list[str]]:
    server = services.server("amphora-server")
    return f"<amphora>\n  uri {server.uri()}\n</amphora>", ["amphora"]


def zeo(tmp: Path, services: Services) -> tuple[str, list[str]]:
    server = services.server("zeo-filestorage")
    return f"<zeoclient>\n  server 127.0.0.1:{server.port}\n</zeoclient>", []


DATABASES: dict[str, Callable[[Path, Services], tuple[str, list[str]]]] = {
    "filestorage": filestorage,
    "relstorage-sqlite": relstorage_sqlite,
    "amphora-sqlite": amphora_sqlite,
    "amphora-postgresql": amphora_postgresql,
    "relstorage-postgresql": relstorage_postgresql,
    "amphora-serve": amphora_serve,
    "zeo": zeo,
}
#: (amphora's database, what it is compared with)
PAIRS = [("amphora-sqlite", "filestorage"), ("amphora-sqlite", "relstorage-sqlite"),
         ("amphora-postgresql", "relstorage-postgresql"), ("amphora-serve", "zeo")]
#: names --only takes for a pair of databases
GROUPS = {"postgresql": ["amphora-postgresql", "relstorage-postgresql"],
          "served": ["amphora-serve", "zeo"],
          "sqlite": ["filestorage", "relstorage-sqlite", "amphora-sqlite"]}


def check_installed() -> None:
    """Exit with what to install if zodbshootout or its pyperf is missing."""
    try:
        import pyperf
        import zodbshootout  # noqa: F401
    except ImportError as exc:
        sys.exit(f"{exc.name} is missing: install the bench extra "
                 "(pip install -e '.[bench]', which brings zodbshootout and pyperf<2)")
    if int(pyperf.__version__.split(".")[0]) >= 2:
        sys.exit(f"zodbshootout needs pyperf 1, not {pyperf.__version__}: install the bench "
                 "extra (pip install -e '.[bench]')")


def write_config(tmp: Path, names: list[str], services: Services) -> Path:
    """The ZConfig file naming a ``<zodb>`` per database of ``names``."""
    imports: list[str] = []
    sections = []
    for name in names:
        section, needs = DATABASES[name](tmp, services)
        for directory in ("fs", "relstorage", "amphora"):
            (tmp / directory).mkdir(exist_ok=True)
        imports += [module for module in needs if module not in imports]
        body = "\n".join("  " + line for line in section.splitlines())
        sections.append(f"<zodb {name}>\n{body}\n</zodb>")
    path = tmp / "zodbshootout.conf"
    path.write_text("".join(f"%import {module}\n" for module in imports) + "\n"
                    + "\n\n".join(sections) + "\n")
    return path


def run_shootout(config: Path, args: argparse.Namespace, output: Path) -> None:
    command = [sys.executable, "-m", "zodbshootout", "-p", "1", "-c", "1", "-l", "1",
               "-n", str(args.values),
               "-w", str(args.warmups), "--object-counts", str(args.objects),
               "-s", str(args.object_size),
               "--include-mapping", "no" if args.no_floor else "yes", "-q", "-o", str(output)]
    if "add" in args.workloads:  # (zodbshootout zaps only a run that adds)
        command += ["--zap", "force"]
    if args.profile:
        command += ["--profile", str(Path(args.profile).resolve())]
    command += [str(config), *args.workloads]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def medians(output: Path, names: list[str], workloads: list[str], objects: int
            ) -> dict[str, dict[str, float]]:
    """{database: {workload: median seconds per value}} from zodbshootout's JSON."""
    import pyperf
    suite = pyperf.BenchmarkSuite.load(str(output))
    found: dict[str, dict[str, float]] = {name: {} for name in names}
    for bench in suite.get_benchmarks():
        title = bench.get_name()
        for name in names:
            for workload in workloads:
                if title.endswith(f" {name}: {_NAMES[workload].format(n=objects)}"):
                    found[name][workload] = statistics.median(bench.get_values())
    return found


def report(found: dict[str, dict[str, float]], workloads: list[str], objects: int) -> None:
    names = list(found)
    print(f"\nmedian ms per transaction of {objects} objects")
    print(f"{'workload':10}" + "".join(f"{name:>20}" for name in names))
    for workload in workloads:
        cells = [found[name].get(workload) for name in names]
        print(f"{workload:10}" + "".join(f"{c * 1000:20.2f}" if c else f"{'-':>20}"
                                         for c in cells))
    pairs = [(a, b) for a, b in PAIRS if a in found and b in found]
    if FLOOR in found and REFERENCE in found:
        pairs.append((FLOOR, REFERENCE))  # the ceiling: no storage beats FileStorage by more
    if not pairs:
        return
    print("\nratios (the other's time over amphora's; > 1: amphora is faster; "
          f"{FLOOR} / {REFERENCE}: the most any storage can gain on {REFERENCE})")
    print(f"{'workload':10}" + "".join(f"{a + ' / ' + b:>40}" for a, b in pairs))
    for workload in workloads:
        cells = []
        for a, b in pairs:
            mine, theirs = found[a].get(workload), found[b].get(workload)
            if mine and theirs:
                goal = None if a == FLOOR else TARGETS.get(workload) if b == REFERENCE else 1.0
                mark = "" if goal is None else (" ok" if theirs / mine >= goal else " MISS")
                cells.append(f"{theirs / mine:.2f}x{mark}")
            else:
                cells.append("-")
        print(f"{workload:10}" + "".join(f"{cell:>40}" for cell in cells))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000, help="objects per transaction")
    parser.add_argument("--object-size", type=int, default=300,
                        help="bytes of each object, estimated (zodbshootout -s; its default)")
    parser.add_argument("--values", type=int, default=3,
                        help="timed values per workload and database (zodbshootout -n)")
    parser.add_argument("--warmups", type=int, default=1, help="untimed values first (-w)")
    parser.add_argument("--only", default="",
                        help="comma-separated databases and workloads to run")
    parser.add_argument("--json", help="also write the medians here")
    parser.add_argument("--profile", help="a directory for zodbshootout's cProfile output")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out zodbshootout's MappingStorage (the floor: ZODB.DB's own "
                             "cost over a storage that costs nothing)")
    args = parser.parse_args(argv)
    only = [name for item in args.only.split(",") if item
            for name in GROUPS.get(item, [item])]
    unknown = [item for item in only if item not in DATABASES and item not in _NAMES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (databases: "
                     f"{', '.join(DATABASES)}; pairs: {', '.join(GROUPS)}; "
                     f"workloads: {', '.join(_NAMES)})")
    args.names = [name for name in DATABASES if name in only] or list(DATABASES)
    args.workloads = [w for w in _NAMES if w in only] or WORKLOADS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_installed()
    tmp = Path(tempfile.mkdtemp(prefix="zodbshootout-"))
    services = Services(tmp)
    try:
        config = write_config(tmp, args.names, services)
        output = tmp / "results.json"
        run_shootout(config, args, output)
        names = args.names if args.no_floor else [FLOOR, *args.names]
        found = medians(output, names, args.workloads, args.objects)
    finally:
        services.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(found, args.workloads, args.objects)
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
