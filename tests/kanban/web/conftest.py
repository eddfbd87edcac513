"""Fixtures of the Kanban web tests (see :mod:`kanbanprocess` for the server process).

``kanban_server``: a server on a SQLite file in ``tmp_path``; ``admin`` and ``member``:
signed-in clients on it (their CSRF token a default header); ``anonymous``: a client
with no session. ``team``: one server per module and storage kind (SQLite file,
``amphora://`` through a real ``amphora serve``, PostgreSQL), with ``admin`` and
``member`` clients, for the core API tests; ``board``: a fresh board on it.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kanbanprocess import (STORAGES, KanbanServer, Team, start_kanban,  # noqa: E402,F401
                           storage_uri)


@pytest.fixture
def kanban_server(request: Any, tmp_path: Path) -> Iterator[KanbanServer]:
    """A server on a SQLite file in ``tmp_path``; on another storage kind of
    :data:`STORAGES` for tests that parametrise it indirectly
    (``pytest.mark.parametrize("kanban_server", STORAGES, indirect=True)``)."""
    uri, drop = storage_uri(getattr(request, "param", "sqlite"), tmp_path)
    server = start_kanban(uri, tmp_path)
    try:
        yield server
    finally:
        server.stop()
        drop()
    assert server.problems() == [], "".join(server.stderr_lines)


@pytest.fixture
def admin(kanban_server: KanbanServer) -> httpx.Client:
    return kanban_server.admin_client()


@pytest.fixture
def member(kanban_server: KanbanServer, admin: httpx.Client) -> httpx.Client:
    return kanban_server.invite(admin, "member@example.org", display_name="Member")


@pytest.fixture
def anonymous(kanban_server: KanbanServer) -> httpx.Client:
    return kanban_server.client()


@pytest.fixture(scope="module", params=STORAGES)
def team(request: Any, tmp_path_factory: Any) -> Iterator[Team]:
    directory = tmp_path_factory.mktemp(f"kanban-{request.param}")
    uri, drop = storage_uri(request.param, directory)
    server = start_kanban(uri, directory)
    try:
        admin = server.admin_client()
        member = server.invite(admin, "member@example.org", display_name="Member")
        yield Team(request.param, server, admin, member)
    finally:
        server.stop()
        drop()
    assert server.problems() == [], "".join(server.stderr_lines)


@pytest.fixture
def board(team: Team) -> str:
    """A fresh board with the default states on the module's server."""
    return team.new_board()
