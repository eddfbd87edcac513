"""The Kanban app under load: 50 people moving and editing cards on 5 boards.

Run from the repository root::

    .venv/bin/python benchmarks/kanban_load.py                    # 60 s per storage
    .venv/bin/python benchmarks/kanban_load.py --seconds 20 --markdown

Each contender starts its own app process (``python -m amphora_kanban serve URI
--listen 127.0.0.1:0``) on a fresh directory; the benchmark process is the 50 people
(async HTTP clients, :mod:`amphora_kanban.load`) and the listeners (two per board,
following the Server-Sent Events):

==================  ===============================================================
``sqlite``          the app on ``sqlite:///<tmp>/kanban.db`` (the embedded default)
``server``          the app on ``amphora://``: an ``amphora serve`` process on a
                    SQLite file, the app its client
``postgresql``      the app on a private PostgreSQL server (``--postgresql``; needs
                    the server programs, as the tests do)
==================  ===============================================================

Reported per contender: requests per second, move latency p50/p99, and the time from
sending a move to its event reaching a listener of the board (p50/p99), with the number
of moves refused by the hard WIP limit (409) and any problem the run's checks found
(there must be none). A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

from amphora_kanban.load import run_load  # noqa: E402

ADMIN = "admin@example.com"
PASSWORD = "benchmark-password"


def _start(argv: list[str], marker: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if marker in line:
            return process, line.strip()
    process.kill()
    raise RuntimeError(f"{' '.join(argv)} did not start")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def app_on(uri: str, directory: Path) -> Iterator[str]:
    """An app process on ``uri`` with an administrator; yields its base URL."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    password_file = directory / "password"
    password_file.write_text(PASSWORD)
    subprocess.run([sys.executable, "-m", "amphora_kanban", "adduser", uri, ADMIN,
                    "--admin", "--password-file", str(password_file)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    process, line = _start([sys.executable, "-m", "amphora_kanban", "serve", uri,
                            "--listen", "127.0.0.1:0"], "listening on", env)
    try:
        yield line.rsplit(" ", 1)[-1]
    finally:
        _stop(process)


@contextmanager
def contender(name: str, directory: Path) -> Iterator[str]:
    if name == "sqlite":
        with app_on(f"sqlite:///{directory}/kanban.db", directory) as url:
            yield url
    elif name == "server":
        server, line = _start([sys.executable, "-m", "amphora", "serve",
                               f"sqlite:///{directory}/server.db", "--listen",
                               "127.0.0.1:0"], "amphora: serving", dict(os.environ))
        try:
            address = line.split()[-1]
            with app_on(f"amphora://{address}", directory) as url:
                yield url
        finally:
            _stop(server)
    elif name == "postgresql":
        import pgserver  # the tests' private PostgreSQL server
        try:
            with app_on(pgserver.server().uri(), directory) as url:
                yield url
        finally:
            pgserver.stop()
    else:
        raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--boards", type=int, default=5)
    parser.add_argument("--only", action="append", choices=["sqlite", "server", "postgresql"])
    parser.add_argument("--postgresql", action="store_true", help="also run on PostgreSQL")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    names = args.only or ["sqlite", "server"] + (["postgresql"] if args.postgresql else [])
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp, contender(name, Path(tmp)) as url:
            report = asyncio.run(run_load(url, ADMIN, PASSWORD, users=args.users,
                                          boards=args.boards, seconds=args.seconds))
            results[name] = report.summary()
            for problem in report.problems[:10]:
                print(f"  {name}: {problem}", file=sys.stderr)
        print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    if args.markdown:
        print("| storage | req/s | move p50 ms | move p99 ms | event p50 ms | event p99 ms "
              "| moves | 409 | problems |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            print(f"| {name} | {r['requests_per_second']} | {r['move_p50_ms']} | "
                  f"{r['move_p99_ms']} | {r['event_p50_ms']} | {r['event_p99_ms']} | "
                  f"{r['moves']} | {r['refused_409']} | {r['problems']} |")
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
