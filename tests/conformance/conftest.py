"""Fixtures for tests that use a DB: connections, each with its own transaction manager."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import transaction


@pytest.fixture
def connect(db) -> Callable[..., Any]:
    """``connect(database=db, **open_options)``: a connection with its own
    ``transaction.TransactionManager`` (``conn.transaction_manager``), as if used by its
    own thread. Connections still open at the end of the test are aborted and closed."""
    opened = []

    def connect(database: Any = None, **options: Any) -> Any:
        conn = (database or db).open(transaction.TransactionManager(), **options)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        if conn.opened:
            conn.transaction_manager.abort()
            conn.close()
