"""Helpers of the ``amphora deploy`` tests (imported by them; the fixture is in conftest): the real command in a deployment directory,
free ports, and looks at the processes that run."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

AMPHORA = [sys.executable, "-m", "amphora"]


def deploy(directory: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``amphora deploy ARGS`` in ``directory``; checks its exit status against ``ok``."""
    done = subprocess.run([*AMPHORA, "deploy", *args], cwd=directory, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=240)
    if ok:
        assert done.returncode == 0, f"deploy {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    else:
        assert done.returncode == 2, f"deploy {' '.join(args)} did not fail:\n{done.stdout}"
    return done


def status(directory: Path) -> dict[str, dict[str, Any]]:
    """``amphora deploy status --json``: part name -> its row."""
    rows = map(json.loads, deploy(directory, "status", "--json").stdout.splitlines())
    return {row["part"]: row for row in rows}


def pids(directory: Path) -> dict[str, int | None]:
    """Part name -> its pid, as ``status`` gives it (asked in this process: quicker)."""
    from amphora.deploy import Stack
    return {row["part"]: row["pid"] for row in Stack(directory / "amphora.toml").status()}


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running: it only waits for its parent to read its status
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def processes_in(directory: Path) -> list[int]:
    """The pids of the processes whose working directory is in ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if (cwd == directory or directory in cwd.parents) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_until(check: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    """``check()``'s first true answer; fails naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def new_directory() -> Iterator[Path]:
    """An empty directory that the ``postgres`` user can reach too (a local cluster runs
    as that user when the tests run as root); its deployment stopped and the directory
    removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="amphora-deploy-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        if (directory / "var" / "deploy").exists():
            subprocess.run([*AMPHORA, "deploy", "down"], cwd=directory, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)
