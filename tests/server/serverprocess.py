"""``amphora serve`` as a real process, for tests: started on a free port, stopped with
SIGTERM or killed with SIGKILL, restarted on the same port.

The test suite's client storage kinds (``client->memory``, ``client->sqlite``,
``client->postgresql`` in ``tests/conftest.py``) share one server per kind for the whole session: the server's URI
is a template (``memory://{name}``, ``sqlite:///DIR/{name}.db``) and every test names its
own storages, so tests never see each other's data.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["ServerProcess", "shared_server", "stop_shared_servers", "storage_name"]

_SRC = Path(__file__).resolve().parents[2] / "src"
# Taken now: ZODB's test base points tempfile at each test's own (removed) directory.
_TEMP = tempfile.gettempdir()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), env.get("PYTHONPATH")]))
    return env


class ServerProcess:
    """``python -m amphora serve URI --listen HOST:PORT ARGS...`` (PORT 0: a free one)."""

    def __init__(self, uri: str, *args: str, port: int = 0, cwd: str | None = None,
                 program: list[str] | None = None):
        self.uri = uri
        self.program = program or [sys.executable, "-m", "amphora"]
        self.args = list(args)
        self.host = "127.0.0.1"
        self.port = port
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.program, "serve", self.uri,
             "--listen", f"{self.host}:{self.port}", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
            cwd=self.cwd)
        line = self.proc.stdout.readline()  # "amphora: serving URI on HOST:PORT ..."
        if " on " not in line:
            self.proc.wait(30)
            raise RuntimeError(f"amphora serve did not start: {line}{self.proc.stderr.read()}")
        self.port = int(line.split(" on ")[1].split()[0].rpartition(":")[2])
        stderr = self.proc.stderr
        self.stderr_lines = lines = []
        threading.Thread(target=lambda: lines.extend(stderr), daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self.proc.kill()
        self.proc.wait(30)

    def restart(self) -> None:
        """Start again on the same port."""
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()


_shared: dict[str, ServerProcess] = {}
_shared_lock = threading.Lock()
_directories: list[str] = []


def shared_server(kind: str) -> ServerProcess:
    """The session's server for ``kind`` (``memory``, ``sqlite`` or ``postgresql``: one
    schema per name), started at first use."""
    with _shared_lock:
        server = _shared.get(kind)
        if server is None or server.proc.poll() is not None:
            if kind == "memory":
                uri = "memory://{name}"
            elif kind == "postgresql":
                import pgserver
                uri = pgserver.require().uri(schema="{name}")
            else:
                directory = tempfile.mkdtemp(prefix="amphora-served-", dir=_TEMP)
                _directories.append(directory)
                uri = f"sqlite:///{directory}/{{name}}.db"
            server = _shared[kind] = ServerProcess(uri)
        return server


def stop_shared_servers() -> None:
    with _shared_lock:
        servers = list(_shared.values())
        _shared.clear()
    for server in servers:
        server.stop()
    while _directories:
        shutil.rmtree(_directories.pop(), ignore_errors=True)


def storage_name(path: Path | str) -> str:
    """A storage name for a test's path: unique per test directory and file name."""
    path = Path(path)
    digest = hashlib.sha1(str(path.parent).encode()).hexdigest()[:16]
    return f"{digest}-{path.stem}"
