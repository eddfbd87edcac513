"""Fixtures of the Kanban web tests: a real ``amphora kanban serve`` process, signed-in clients.

``start_kanban(uri, tmp_path)`` starts ``python -m amphora_kanban serve URI --listen
127.0.0.1:0`` (Argon2 at a test-only low cost, ``AMPHORA_KANBAN_ARGON2_FAST=1``), waits
for its ``kanban: listening on URL`` line and reads the first administrator's invitation
link printed before it. The :class:`KanbanServer` it returns has ``url``,
``invite_link``, ``stop()``, and helpers that make signed-in ``httpx.Client`` s:
``admin_client()`` (takes the first administrator's invitation), ``invite(admin, email,
role)`` (an account made through the invitation API).

Fixtures: ``kanban_server`` (a server on a SQLite file in ``tmp_path``), ``admin`` and
``member`` (signed-in clients on it, their CSRF token a default header), and
``anonymous`` (a client with no session).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

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
        return self.proc.returncode


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
    threading.Thread(target=lambda: server.stderr_lines.extend(stderr), daemon=True).start()
    return server


@pytest.fixture
def kanban_server(tmp_path: Path) -> Iterator[KanbanServer]:
    """A server on a SQLite file in ``tmp_path``."""
    server = start_kanban(f"sqlite:///{tmp_path}/kanban.db", tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin(kanban_server: KanbanServer) -> httpx.Client:
    return kanban_server.admin_client()


@pytest.fixture
def member(kanban_server: KanbanServer, admin: httpx.Client) -> httpx.Client:
    return kanban_server.invite(admin, "member@example.org", display_name="Member")


@pytest.fixture
def anonymous(kanban_server: KanbanServer) -> httpx.Client:
    return kanban_server.client()
