"""A real ``amphora kanban serve`` process for tests, and signed-in HTTP clients.

``start_kanban(uri, tmp_path)`` starts ``python -m amphora_kanban serve URI --listen
127.0.0.1:0`` (Argon2 at a test-only low cost, ``AMPHORA_KANBAN_ARGON2_FAST=1``), waits
for its ``kanban: listening on URL`` line and reads the first administrator's invitation
link printed before it. The :class:`KanbanServer` it returns has ``url``,
``invite_link``, ``stop()``, and helpers that make signed-in ``httpx.Client`` s:
``admin_client()`` (takes the first administrator's invitation), ``invite(admin, email,
role)`` (an account made through the invitation API), ``sign_in(email, password)``.
``kanban_command(*args)`` runs the command to its end.

Tests elsewhere import it with this directory on ``sys.path`` (its ``conftest.py`` puts
it there for the tests below it)::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))
    from kanbanprocess import start_kanban
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import uvicorn

SRC = Path(__file__).resolve().parents[3] / "src"
ADMIN_EMAIL = "admin@localhost"
PASSWORD = "correct horse battery"
LISTENING = "kanban: listening on "
FIRST_ADMIN = "kanban: first administrator: "


def kanban_env() -> dict[str, str]:
    """The environment of the processes the tests start: this source tree first, cheap
    password hashing (a test-only setting)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["AMPHORA_KANBAN_ARGON2_FAST"] = "1"
    return env


def kanban_command(*args: str, input: str | None = None, timeout: float = 60
                   ) -> subprocess.CompletedProcess:
    """``python -m amphora_kanban ARGS`` run to its end (stdout and stderr as text)."""
    return subprocess.run([sys.executable, "-m", "amphora_kanban", *args], input=input,
                          capture_output=True, text=True, env=kanban_env(), timeout=timeout)


def signed_in(client: httpx.Client, reply: httpx.Response) -> httpx.Client:
    """``client`` after a sign-in ``reply``: its CSRF token sent with every request."""
    assert reply.status_code == 200, reply.text
    client.headers["X-CSRF-Token"] = reply.json()["csrf_token"]
    return client


@dataclass
class KanbanServer:
    """A running ``amphora kanban serve`` process."""

    uri: str
    proc: subprocess.Popen
    url: str
    invite_link: str | None
    stderr_lines: list[str] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)
    reader: threading.Thread | None = None

    def client(self, **options: Any) -> httpx.Client:
        """A new client with no session (closed when the server stops)."""
        client = httpx.Client(base_url=self.url, timeout=30, **options)
        self.clients.append(client)
        return client

    def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Client:
        client = self.client()
        return signed_in(client, client.post("/api/login",
                                             json={"email": email, "password": password}))

    def accept(self, token: str, password: str = PASSWORD,
               display_name: str | None = None) -> httpx.Client:
        """A client signed in by accepting the invitation ``token``."""
        client = self.client()
        body = {"password": password, "display_name": display_name}
        return signed_in(client, client.post(f"/api/invitations/{token}", json=body))

    def admin_client(self) -> httpx.Client:
        """The first administrator, signed in (its invitation taken the first time)."""
        if self.invite_link is not None:
            token, self.invite_link = self.invite_link.rpartition("/")[2], None
            return self.accept(token, display_name="Admin")
        return self.sign_in(ADMIN_EMAIL)

    def invite(self, admin: httpx.Client, email: str, role: str = "member",
               display_name: str | None = None) -> httpx.Client:
        """A new account made through the invitation API, signed in."""
        reply = admin.post("/api/invitations", json={"email": email, "role": role})
        assert reply.status_code == 201, reply.text
        return self.accept(reply.json()["token"], display_name=display_name)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout`` seconds); the exit status."""
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.reader is not None:
            self.reader.join(30)
        return self.proc.returncode

    def problems(self) -> list[str]:
        """What the server wrote on stderr that tells of an error (after :meth:`stop`)."""
        return [line for line in self.stderr_lines
                if "Traceback" in line or "ERROR" in line or "error" in line.lower()]


# -- API helpers ---------------------------------------------------------------------------

def add(client: httpx.Client, board: str, **card: Any) -> dict[str, Any]:
    """A new card on ``board`` (its JSON); the test fails if it is refused."""
    reply = client.post(f"/api/boards/{board}/cards", json=card)
    assert reply.status_code == 201, reply.text
    return reply.json()


def move(client: httpx.Client, board: str, id: str, **where: Any) -> httpx.Response:
    return client.post(f"/api/boards/{board}/cards/{id}/move", json=where)


def assert_error(reply: httpx.Response, status: int, **fields: str) -> dict[str, Any]:
    """``reply`` is a JSON error of ``status`` whose body has ``fields`` (e.g. the
    ``field`` or the ``rule``); its body."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert isinstance(body["error"], str) and body["error"]
    for key, value in fields.items():
        assert body[key] == value, body
    return body


class EventStream:
    """``GET path`` of the server at ``url`` read as Server-Sent Events in a thread of its
    own (on its own client, with ``client``'s cookies): :meth:`next` is the next message
    as ``{"id", "event", "data"}`` (data parsed as JSON), or ``{"comment": text}`` for a
    comment line."""

    def __init__(self, url: str, client: httpx.Client, path: str,
                 headers: dict[str, str] | None = None):
        self.client = httpx.Client(base_url=url, cookies=client.cookies,
                                   timeout=httpx.Timeout(30, read=None))
        self.messages: queue.Queue = queue.Queue()
        self.status: int | None = None
        self.ended = threading.Event()
        self._response: httpx.Response | None = None
        started = threading.Event()
        threading.Thread(target=self._read, args=(path, headers or {}, started),
                         daemon=True).start()
        if not started.wait(30):
            raise RuntimeError(f"no answer to GET {path}")

    def _read(self, path: str, headers: dict[str, str], started: threading.Event) -> None:
        try:
            with self.client.stream("GET", path, headers=headers) as response:
                self._response, self.status = response, response.status_code
                started.set()
                message: dict[str, Any] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.messages.put({"comment": line[1:].strip()})
                    elif line:
                        key, _, value = line.partition(":")
                        message[key] = value[1:] if value.startswith(" ") else value
                    elif message:
                        self.messages.put({"id": int(message["id"]), "event": message["event"],
                                           "data": json.loads(message["data"])})
                        message = {}
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by close(), or the server went away
        finally:
            started.set()
            self.ended.set()

    def next(self, timeout: float = 30, comments: bool = False) -> dict[str, Any]:
        """The next message (comment lines skipped unless ``comments``); fails the test
        when none comes within ``timeout`` seconds."""
        while True:
            try:
                message = self.messages.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no server-sent event within {timeout} s") from None
            if comments or "comment" not in message:
                return message

    def pending(self) -> list[dict[str, Any]]:
        """The messages received and not yet taken."""
        taken = []
        while not self.messages.empty():
            taken.append(self.messages.get_nowait())
        return taken

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self.client.close()


class InProcess:
    """``create_app(db, **settings)`` under uvicorn in a thread of the test's process, for
    settings the command does not offer (a short ping interval, a clock of the test's);
    ``url``, ``stop()``."""

    def __init__(self, db: Any, **settings: Any):
        from amphora_kanban.cli import listening_socket
        from amphora_kanban.web import create_app
        self.app = create_app(db, fast_hashing=True, **settings)
        self.sock = listening_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.app.state.live.close_soon()
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def start_kanban(uri: str, tmp_path: Path | None = None, *args: str) -> KanbanServer:
    """Start ``amphora kanban serve URI --listen 127.0.0.1:0 ARGS`` and wait until it
    listens (see the module docstring). ``tmp_path`` is its working directory."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_kanban", "serve", uri, "--listen", "127.0.0.1:0",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=kanban_env(), cwd=str(tmp_path) if tmp_path is not None else None)
    invite_link = None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise RuntimeError(f"amphora kanban serve did not start (status "
                               f"{proc.returncode}): {proc.stderr.read()}")
        if line.startswith(FIRST_ADMIN):
            invite_link = line.rstrip().rpartition(" at ")[2]
        elif line.startswith(LISTENING):
            url = line[len(LISTENING):].strip()
            break
    server = KanbanServer(uri, proc, url, invite_link)
    stderr = proc.stderr
    server.reader = threading.Thread(target=lambda: server.stderr_lines.extend(stderr),
                                     daemon=True)
    server.reader.start()
    return server


# -- one server per module and storage kind, for the core API tests ----------------------

STORAGES = ["sqlite", "amphora", "postgresql"]


def storage_uri(kind: str, directory: Path) -> tuple[str, Any]:
    """A fresh database of ``kind`` for a module: its URI, and what drops it after.
    ``amphora``: a storage of the session's ``amphora serve`` process of SQLite files;
    ``postgresql``: a schema in the session's PostgreSQL server (skipped with a reason
    when there is none, failed under CI)."""
    if kind == "sqlite":
        return f"sqlite:///{directory}/kanban.db", lambda: None
    if kind == "amphora":
        import serverprocess  # tests/server/serverprocess.py, on the path of tests/conftest.py
        served = serverprocess.shared_server("sqlite")
        return (f"amphora://{served.address}/{serverprocess.storage_name(directory / 'k')}",
                lambda: None)
    import pgserver
    server = pgserver.require()
    schema = pgserver.schema_for(str(directory))

    def drop() -> None:
        server.remember_schema(schema)
        server.drop_schemas()
    return server.uri(schema=schema), drop


@dataclass
class Team:
    """A server shared by a module's tests, an administrator and a member signed in."""

    kind: str
    server: KanbanServer
    admin: httpx.Client
    member: httpx.Client
    boards: int = 0

    def new_board(self, **extra: Any) -> str:
        """A new board (made by the admin) for one test; its name."""
        self.boards += 1
        name = f"board-{self.boards}"
        reply = self.admin.post("/api/boards", json={"name": name, "title": name, **extra})
        assert reply.status_code == 201, reply.text
        return name


