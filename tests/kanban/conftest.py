"""Fixtures of the Kanban model tests: a real amphora database, in memory and on SQLite.

``kanban_db`` is an :class:`amphora.DB` of each kind; ``session`` is an open connection
on it with its own transaction manager (``session.commit()``, ``session.root``), and
``board`` a default board on a site stored in the root and committed.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest

import amphora
from amphora_kanban import Board, Site
from kanban_sessions import Session, open_session


@pytest.fixture(params=["memory", "sqlite"])
def kanban_uri(request: Any, tmp_path: Any) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/kanban.db"


@pytest.fixture
def kanban_db(kanban_uri: str) -> Iterator[amphora.DB]:
    db = amphora.open(kanban_uri)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def session(kanban_db: amphora.DB) -> Iterator[Session]:
    s = open_session(kanban_db)
    try:
        yield s
    finally:
        s.abort()
        s.conn.close()


@pytest.fixture
def board(session: Session) -> Board:
    site = session.root.site = Site("Test site")
    board = site.add_board("team", "Team board")
    session.commit()
    return board
