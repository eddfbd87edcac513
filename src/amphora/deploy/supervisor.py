"""A deployment's processes, run by supervisor's ``supervisord``.

Everything lives under the deployment's ``var/``: ``var/deploy/supervisord.conf`` (the
daemon's settings: its unix socket, pid file and log), one file per program in
``var/deploy/programs/`` (included by the first), and each program's log in
``var/log/PART.log``. A program restarts when it exits; one that exits within
:data:`STARTSECS` of its start has failed to start, and supervisord waits longer after
each such failure (1 s, 2 s, ...) and gives up after :data:`START_RETRIES` (state
``FATAL``). Logs rotate at :data:`LOG_BYTES` and keep
:data:`LOG_BACKUPS` old files.

Programs are added with ``autostart=false``: ``amphora deploy up`` starts them itself, one
part at a time in dependency order, each after the parts it needs are ready. The daemon is
driven through its XML-RPC interface on the unix socket (what ``supervisorctl`` uses;
``supervisorctl -c var/deploy/supervisord.conf status`` works too).
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amphora.deploy.errors import DeployError

__all__ = ["Program", "Supervisor", "START_RETRIES", "LOG_BYTES", "LOG_BACKUPS"]

START_RETRIES = 5
STARTSECS = 3
LOG_BYTES = "10MB"
LOG_BACKUPS = 5
#: the longest path a unix socket may have (108 bytes with the final NUL on Linux)
SOCKET_PATH_MAX = 100

DAEMON_CONFIG = """\
; written by amphora deploy: edit amphora.toml instead
[unix_http_server]
file = {socket}
chmod = 0700

[supervisord]
logfile = {log}
logfile_maxbytes = {log_bytes}
logfile_backups = {log_backups}
pidfile = {pidfile}
directory = {directory}
identifier = amphora-deploy
nodaemon = false

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{socket}

[include]
files = {programs}/*.conf
"""

PROGRAM_CONFIG = """\
; written by amphora deploy: edit amphora.toml instead
[program:{name}]
command = {command}
directory = {directory}
autostart = false
autorestart = true
startsecs = {startsecs}
startretries = {retries}
stopsignal = {stopsignal}
stopwaitsecs = 20
stopasgroup = true
killasgroup = true
redirect_stderr = true
stdout_logfile = {log}
stdout_logfile_maxbytes = {log_bytes}
stdout_logfile_backups = {log_backups}
environment = {environment}
"""


@dataclass
class Program:
    """One part's process: its command line and how it runs."""
    name: str
    command: list[str]
    directory: Path
    user: str | None = None          # run as this user (supervisord runs as root)
    stopsignal: str = "TERM"
    # how long the process must stay up to count as started: a process that exits sooner
    # is started again after a growing delay; one that exits later, at once
    startsecs: int = STARTSECS
    environment: dict[str, str] = field(default_factory=dict)

    def config(self, log: Path) -> str:
        environment = {"PYTHONUNBUFFERED": "1", **self.environment}
        text = PROGRAM_CONFIG.format(
            name=self.name, command=_escape(shlex.join(self.command)),
            directory=_escape(str(self.directory)), retries=START_RETRIES,
            startsecs=self.startsecs,
            stopsignal=self.stopsignal, log=_escape(str(log)), log_bytes=LOG_BYTES,
            log_backups=LOG_BACKUPS,
            environment=",".join(f'{key}="{_escape(value)}"'
                                 for key, value in environment.items()))
        return text + (f"user = {self.user}\n" if self.user else "")


def _escape(text: str) -> str:
    """``text`` in a supervisor configuration value (its ``%(name)s`` expansions)."""
    if "\n" in text:
        raise DeployError(f"cannot put {text!r} in a supervisor configuration")
    return text.replace("%", "%%")


class Supervisor:
    """The supervisord of the deployment in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.home = directory / "var" / "deploy"
        self.programs = self.home / "programs"
        self.logs = directory / "var" / "log"
        self.config = self.home / "supervisord.conf"
        self.pidfile = self.home / "supervisord.pid"
        self.log = self.logs / "supervisord.log"
        socket = self.home / "supervisor.sock"
        if len(str(socket)) > SOCKET_PATH_MAX:  # a deep directory: a short path instead
            digest = hashlib.blake2b(str(directory).encode(), digest_size=8).hexdigest()
            socket = Path(tempfile.gettempdir()) / f"amphora-deploy-{digest}.sock"
        self.socket = socket

    # -- the daemon ---------------------------------------------------------------------
    def _proxy(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        proxy = self._proxy()
        try:
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise DeployError(f"supervisord refused {method}{args}: {exc.faultString}") from exc
        except OSError as exc:
            raise DeployError(f"supervisord does not answer on {self.socket}: {exc}") from exc

    def pid(self) -> int | None:
        """supervisord's pid when it runs and answers, else None."""
        try:
            return int(self._proxy().supervisor.getPID())
        except (OSError, xmlrpc.client.Error):
            return None

    def start(self) -> None:
        """Start supervisord (with no program running) unless it runs already."""
        self.programs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config.write_text(DAEMON_CONFIG.format(
            socket=_escape(str(self.socket)), log=_escape(str(self.log)),
            log_bytes=LOG_BYTES, log_backups=LOG_BACKUPS, pidfile=_escape(str(self.pidfile)),
            directory=_escape(str(self.directory)), programs=_escape(str(self.programs))))
        if self.pid() is not None:
            return
        done = subprocess.run([sys.executable, "-m", "supervisor.supervisord",
                               "-c", str(self.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=self.directory)
        if done.returncode != 0:
            raise DeployError(f"supervisord did not start: {done.stdout.strip()}")
        deadline = time.monotonic() + 30
        while self.pid() is None:
            if time.monotonic() > deadline:
                raise DeployError(f"supervisord did not answer on {self.socket}; see "
                                  f"{self.log}")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Stop supervisord (its programs first) and wait until it has exited."""
        pid = self.pid()
        if pid is None:
            return
        self._call("shutdown")
        deadline = time.monotonic() + 60
        while _alive(pid):
            if time.monotonic() > deadline:
                raise DeployError(f"supervisord (pid {pid}) did not stop")
            time.sleep(0.05)

    # -- programs -----------------------------------------------------------------------
    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def put(self, program: Program) -> None:
        """Make supervisord know ``program`` as it is now written (not started)."""
        (self.programs / f"{program.name}.conf").write_text(
            program.config(self.log_of(program.name)))
        self._reload(program.name)

    def remove(self, name: str) -> None:
        """Stop ``name`` and make supervisord forget it."""
        (self.programs / f"{name}.conf").unlink(missing_ok=True)
        if self.pid() is not None:
            self._reload(name)

    def _reload(self, name: str) -> None:
        [[added, changed, removed]] = self._call("reloadConfig")
        if name in changed or name in removed:
            self.stop(name)
            self._call("removeProcessGroup", name)
        if name in added or name in changed:
            self._call("addProcessGroup", name)

    def info(self, name: str) -> dict[str, Any] | None:
        """supervisord's record of ``name`` (statename, pid, start, now ...) or None."""
        if self.pid() is None:
            return None
        try:
            return self._proxy().supervisor.getProcessInfo(name)
        except xmlrpc.client.Fault:
            return None

    def start_program(self, name: str) -> None:
        info = self.info(name)
        if info is not None and info["statename"] not in ("RUNNING", "STARTING"):
            self._call("startProcess", name, False)

    def stop(self, name: str) -> None:
        """Stop ``name`` (and its process group) if it runs; wait until it has."""
        info = self.info(name)
        if info is not None and info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            try:
                self._call("stopProcess", name, True)
            except DeployError:
                if (self.info(name) or {}).get("statename") not in ("STOPPED", "EXITED",
                                                                    "FATAL"):
                    raise

    def spawns(self, name: str) -> int:
        """How many times supervisord started ``name``, by its log: the current file and
        the rotated ones beside it (``supervisord.log.1``, ...), so that a rotation does
        not reset the count (until the oldest backup is dropped)."""
        mark = f"spawned: '{name}' with pid"
        count = 0
        for path in [self.log, *self.log.parent.glob(f"{self.log.name}.[0-9]*")]:
            try:
                count += path.read_text(errors="replace").count(mark)
            except FileNotFoundError:  # (rotated away meanwhile)
                continue
        return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
