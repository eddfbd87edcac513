"""The JSON mirror's cost on a bulk PostgreSQL commit, against what PostgreSQL itself
spends on the same documents (the floor), side by side in one run.

Run from the repository root::

    .venv/bin/python benchmarks/mirror_floor.py                 # a private server, fsync on
    .venv/bin/python benchmarks/mirror_floor.py --rounds 15 --loops 5
    .venv/bin/python benchmarks/mirror_floor.py --uri postgresql://user@host/db

Variants, each timed per 1000-object add commit (``mirror_bench.py``'s ``add``: open,
put N new ``Item`` objects into an empty OOBTree, commit, close):

``amphora``  the commit through amphora, with the mirror off and kept by the commit
             (``sync``): ``mirror_bench.one_round``, unchanged, so the same workload
             (each commit followed by an update of its N objects, as there).
``statement`` the floor: the same rows written by plain psycopg, no amphora code while
             timing. Before the rounds, one amphora ``sync`` run like the above is
             captured: every record of every commit it made, read back from its tables,
             and each record's document made by the transcoder (the exact text a commit
             sends; checked against the documents the commits stored). Each round then replays
             every captured commit into a fresh schema made by the storage itself (the
             same ``objects`` table, indexes and fillfactor; ``create_mirror`` for the
             documented variant), in one transaction per commit with the storage's own
             INSERT and upsert statements (``_WRITES``, parameters made beforehand, one
             pipeline, as the vote sends them), commit included; only the add commits
             are timed.
``copy``     the same replay, the new rows sent as ``COPY ... FROM STDIN`` (text format,
             the block formatted beforehand): the cheapest way PostgreSQL takes these
             rows, to show whether amphora's statement adds server work of its own.

Each variant runs "without documents" and "with documents"; its extra is the difference
of the medians. Three measures per commit: the wall clock; the CPU time of this process
(the client: amphora, or psycopg alone); the CPU time of the server's processes, summed
from ``/proc/PID/schedstat`` of the private server's postmaster and its children (not
measured with ``--uri``). On a machine shared with other work the wall clock also holds
waits for a core and for the disk; the CPU times say whose work an extra is. amphora's
own part of the mirror's cost = amphora's extra - the statement floor's extra, in each
measure: making the JSON in the client and anything else amphora does for the documents.
The transcoding of one add commit's records (``records_to_json`` and the joining of the
documents into the strings the statement takes) is timed apart too.

Rounds run every variant once, in rotating order, each in its own new schema
(``?schema=bench_floor_...``, dropped afterwards), so that noise from other work on the
machine spreads over all of them; the spread printed is that of the per-round extras
(each round's medians). Durability as ``mirror_bench.py --postgresql`` (``--pg-fsync on``:
PostgreSQL's defaults, a commit waits for its WAL flush). A benchmark, not a test:
nothing asserts a time.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # the amphora of this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import amphora  # noqa: E402
from amphora.jsonpickle import records_to_json  # noqa: E402
from amphora.storage.postgresql.mirror import _travelling  # noqa: E402
from amphora.storage.postgresql.storage import (_ARCHIVE_CURRENT, _WRITES, _refs_literal,  # noqa: E402
                                                _rows)
from mirror_bench import drop_schema, fresh_uri, one_round  # noqa: E402
from shootout import PostgreSQLServer  # noqa: E402

VARIANTS = {
    "amphora": "amphora commit (mirror off / sync)",
    "statement": "psycopg, amphora's statement",
    "copy": "psycopg, COPY of the new rows",
}
_CAPTURED = """
SELECT tid, oid, data FROM objects UNION ALL SELECT tid, oid, data FROM revisions
ORDER BY tid, oid"""
_STORED_DOCUMENTS = "SELECT oid, data, class_name, state FROM objects"
_COPY = "COPY objects (oid, tid, data, refs{documents}) FROM STDIN"
_COPY_DOCUMENTS = ", class_name, state, state_tid"


class Meter:
    """A sample is ``(wall, client CPU, server CPU)`` in seconds: the wall clock, the CPU
    time of this process, and the CPU time the kernel counted for the server's processes
    (the postmaster and its children: backends, WAL writer, ...; ``/proc/PID/schedstat``,
    in ns), None when the server is not a local process of known pid. On a machine shared
    with other work the wall clock includes waiting for a core and for the disk (the
    commit's WAL flush); the CPU times do not. Reading ``/proc`` stays outside both of
    this process's times."""

    def __init__(self, postmaster: int | None):
        self.postmaster = postmaster

    def start(self) -> tuple:
        server = self._server_cpu()
        return time.perf_counter(), time.process_time(), server

    def stop(self, started: tuple) -> tuple:
        wall, cpu = time.perf_counter(), time.process_time()
        server = self._server_cpu()
        return (wall - started[0], cpu - started[1],
                None if server is None else server - started[2])

    def _server_cpu(self) -> float | None:
        postmaster = self.postmaster
        if postmaster is None:
            return None
        total = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
                if ppid == postmaster or int(name) == postmaster:
                    with open(f"/proc/{name}/schedstat", "rb") as schedstat:
                        total += int(schedstat.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
        return total / 1e9


MEASURES = ("wall clock", "CPU of the client (this process)",
            "CPU of the server (the PostgreSQL processes)")


@dataclass
class Commit:
    """One captured commit: its rows in the order the vote writes them (by oid)."""

    tid: int
    created: list[tuple[int, bytes]] = field(default_factory=list)
    replaced: list[tuple[int, bytes]] = field(default_factory=list)
    timed: bool = False         # an add commit (the one the benchmark measures)


@dataclass
class Capture:
    commits: list[Commit]
    documents: dict[bytes, tuple[str, str]]     # by record


def capture(uri: str, n: int, loops: int, seed: int) -> Capture:
    """Every commit of one amphora ``sync`` round, with the documents the transcoder
    makes of its records (checked against the documents stored)."""
    import psycopg
    one_round(uri, "sync", n, loops, seed)
    dsn, schema = _where(uri)
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn:
        rows = conn.execute(_CAPTURED, binary=True).fetchall()
        commits: dict[int, Commit] = {}
        seen: set[int] = set()
        for tid, oid, data in rows:
            commit = commits.setdefault(tid, Commit(tid))
            (commit.replaced if oid in seen else commit.created).append((oid, bytes(data)))
            seen.add(oid)
        datas = [bytes(data) for _, _, data in rows]
        documents = dict(zip(datas, records_to_json(datas)))
        for commit in commits.values():
            commit.timed = len(commit.created) >= n
        _check_documents(conn, documents)
    timed = sum(commit.timed for commit in commits.values())
    if timed != loops:
        raise RuntimeError(f"captured {timed} add commits, expected {loops}")
    return Capture(list(commits.values()), documents)


def _check_documents(conn: Any, documents: dict[bytes, tuple[str, str]]) -> None:
    """Raise unless every current record's stored document is the transcoder's."""
    import json
    stored = conn.execute(_STORED_DOCUMENTS, binary=True).fetchall()
    for oid, data, class_name, state in stored:
        made_class, made_state = documents[bytes(data)]
        if class_name != made_class or state != json.loads(made_state):
            raise RuntimeError(f"oid {oid}: the transcoder's document is not the stored one")
    if not stored:
        raise RuntimeError("the captured commits stored no documents")


def _where(uri: str) -> tuple[str, str]:
    storage: Any = amphora.open_storage(uri)
    try:
        return storage.dsn, storage.schema
    finally:
        storage.close()


# -- the floor: replaying the captured commits with plain psycopg ---------------------------
def _write_params(tid: int, rows: list[tuple[int, bytes]], documents: dict | None
                  ) -> tuple[str | None, dict[str, Any]]:
    """The storage's statement key and parameters for ``rows`` (made before timing)."""
    params = _rows(tid, rows, [_refs_literal(data) for _, data in rows])
    if documents is None:
        return None, params
    how, params["classes"], params["states"] = _travelling([documents[data]
                                                            for _, data in rows])
    return how, params


def _copy_block(tid: int, rows: list[tuple[int, bytes]], documents: dict | None) -> bytes:
    """The rows as COPY's text format."""
    lines = []
    for oid, data in rows:
        refs = _refs_literal(data)
        cells = [str(oid), str(tid), "\\\\x" + data.hex(), "\\N" if refs == "N" else refs]
        if documents is not None:
            class_name, state = documents[data]
            cells += [_copy_text(class_name), _copy_text(state), str(tid)]
        lines.append("\t".join(cells) + "\n")
    return "".join(lines).encode()


def _copy_text(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _plan(commit: Commit, documents: dict | None, copy: bool) -> Callable[[Any], None]:
    """What writing ``commit`` sends, as a function of the connection (no amphora code:
    statements and parameters are made here, before timing)."""
    tid = commit.tid
    statements = []
    if commit.replaced:
        keys = [oid for oid, _ in commit.replaced]
        statements.append((_ARCHIVE_CURRENT, (tid, keys)))
        how, params = _write_params(tid, commit.replaced, documents)
        statements.append((_WRITES[how][0], params))
    block = None
    if commit.created and copy:
        block = _copy_block(tid, commit.created, documents)
        copy_sql = _COPY.format(documents=_COPY_DOCUMENTS if documents is not None else "")
    elif commit.created:
        how, params = _write_params(tid, commit.created, documents)
        statements.append((_WRITES[how][1], params))

    def write(conn: Any) -> None:
        with conn.pipeline():
            for statement, params in statements:
                conn.execute(statement, params)
        if block is not None:
            with conn.cursor().copy(copy_sql) as copying:
                copying.write(block)
        conn.commit()
    return write


def replay(uri: str, captured: Capture, documents: bool, copy: bool, meter: Meter
           ) -> list[tuple]:
    """``meter``'s samples of the timed commits of ``captured`` replayed into a new schema
    of ``uri``."""
    import psycopg
    storage: Any = amphora.open_storage(uri)
    try:
        if documents:
            storage.create_mirror(mode="sync")
        dsn, schema = storage.dsn, storage.schema
    finally:
        storage.close()
    docs = captured.documents if documents else None
    plans = [(commit.timed, _plan(commit, docs, copy)) for commit in captured.commits]
    samples = []
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn:
        for timed, write in plans:
            gc.collect()
            gc.disable()
            try:
                started = meter.start()
                write(conn)
                if timed:
                    samples.append(meter.stop(started))
            finally:
                gc.enable()
    return samples


# -- the rounds -------------------------------------------------------------------------
def measure(uri: str, captured: Capture, meter: Meter, args: argparse.Namespace
            ) -> dict[tuple[str, bool], list[list[tuple]]]:
    """Per (variant, with documents): per round, ``meter``'s samples."""
    runs = {
        "amphora": lambda u, docs: one_round(u, "sync" if docs else "off", args.objects,
                                              args.loops, args.seed, meter)["add"],
        "statement": lambda u, docs: replay(u, captured, docs, False, meter),
        "copy": lambda u, docs: replay(u, captured, docs, True, meter),
    }
    cells = [(variant, docs) for variant in VARIANTS for docs in (False, True)]
    results: dict[tuple[str, bool], list[list[tuple]]] = {cell: [] for cell in cells}
    for round_no in range(args.rounds):
        shift = round_no % len(cells)
        for variant, docs in cells[shift:] + cells[:shift]:
            name = f"floor_{variant}_{'docs' if docs else 'plain'}"
            round_uri = fresh_uri("postgresql", "", uri, round_no, name)
            try:
                results[variant, docs].append(runs[variant](round_uri, docs))
            finally:
                drop_schema(round_uri)
    return results


def transcoding(captured: Capture, repeat: int) -> float:
    """Median seconds to make and join the documents of one add commit's records."""
    commit = next(commit for commit in captured.commits if commit.timed)
    datas = [data for _, data in commit.created + commit.replaced]
    times = []
    for _ in range(repeat):
        gc.disable()
        started = time.perf_counter()
        _travelling(records_to_json(datas))
        times.append(time.perf_counter() - started)
        gc.enable()
    return statistics.median(times)


def report(results: dict[tuple[str, bool], list[list[tuple]]], captured: Capture,
           args: argparse.Namespace) -> None:
    commit = next(commit for commit in captured.commits if commit.timed)
    rows = commit.created + commit.replaced
    json_bytes = sum(len(captured.documents[data][1].encode()) for _, data in rows)
    record_bytes = sum(len(data) for _, data in rows)
    print(f"{args.objects} objects per add commit: {len(rows)} records of "
          f"{record_bytes / len(rows):.0f} bytes, documents of {json_bytes / len(rows):.0f} "
          f"bytes of JSON on average ({args.rounds} rounds x {args.loops} commits per cell)")
    print(f"  {'ms per commit (median)':34s} {'without':>8s} {'with':>8s} {'extra':>7s} "
          f"{'':6s}  per-round extra: median [min .. max]")
    own = []
    for index, measure_name in enumerate(MEASURES):
        if results["amphora", False][0][0][index] is None:
            print(f"  {measure_name}: not measured (a server of your own, or no /proc)")
            continue
        print(f"  {measure_name}")
        extras: dict[str, list[float]] = {}
        for variant, label in VARIANTS.items():
            plain, documented = ([[sample[index] * 1000 for sample in samples]
                                  for samples in results[variant, docs]]
                                 for docs in (False, True))
            off = statistics.median([value for values in plain for value in values])
            on = statistics.median([value for values in documented for value in values])
            extras[variant] = [statistics.median(b) - statistics.median(a)
                               for a, b in zip(plain, documented)]
            print(f"    {label:32s} {off:8.2f} {on:8.2f} {on - off:7.2f} "
                  f"{(on / off - 1) * 100:+5.0f}%  {_spread(extras[variant])}")
        own.append((measure_name.split(" (")[0],
                    [a - s for a, s in zip(extras["amphora"], extras["statement"])]))
    print("  amphora's own part (amphora's extra - the statement floor's extra), per round:")
    for measure_name, values in own:
        print(f"    {measure_name:32s} {_spread(values)}")
    made = transcoding(captured, max(args.rounds, 9)) * 1000
    print(f"  making and joining one commit's documents in the client: {made:.2f} ms")


def _spread(values: list[float]) -> str:
    return (f"{statistics.median(values):6.2f} [{min(values):.2f} .. {max(values):.2f}] ms")


def postmaster_pid(pg: PostgreSQLServer) -> int | None:
    """The pid of the private server's postmaster (the first line of postmaster.pid), or
    None where the kernel does not show its run time (no ``/proc/PID/schedstat``)."""
    pid = int((pg.server().data / "postmaster.pid").read_text().split()[0])
    return pid if os.path.exists(f"/proc/{pid}/schedstat") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000, help="objects per add commit")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--loops", type=int, default=5, help="add commits per round and cell")
    parser.add_argument("--uri", help="a PostgreSQL database of your own (a new schema per "
                                      "round and variant, dropped after it) instead of a "
                                      "private server")
    parser.add_argument("--pg-fsync", choices=("on", "off"), default="on",
                        help="the private server's durability (see benchmarks/shootout.py)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    pg = PostgreSQLServer(durable=args.pg_fsync == "on")
    try:
        uri = args.uri or pg.uri(pg.create("floor"))
        print(f"mirror floor: python {sys.version.split()[0]}")
        if not args.uri:
            print(f"  postgresql {pg.version()} (private server, {pg.settings})")
        capture_uri = fresh_uri("postgresql", "", uri, 0, "floor_capture")
        try:
            captured = capture(capture_uri, args.objects, args.loops, args.seed)
        finally:
            drop_schema(capture_uri)
        meter = Meter(None if args.uri else postmaster_pid(pg))
        report(measure(uri, captured, meter, args), captured, args)
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
