"""A connection with its own transaction manager, for the model tests (a module of its
own, not the conftest, so that tests import it by a name no other directory uses)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import transaction

import amphora


@dataclass
class Session:
    """A connection with its own transaction manager."""

    conn: Any
    manager: transaction.TransactionManager

    @property
    def root(self) -> Any:
        return self.conn.root

    def commit(self) -> None:
        """Commit and begin the next transaction (which sees others' commits)."""
        self.manager.commit()
        self.manager.begin()

    def abort(self) -> None:
        """Abort and begin the next transaction, as a retry loop does."""
        self.manager.abort()
        self.manager.begin()


def open_session(db: amphora.DB) -> Session:
    manager = transaction.TransactionManager()
    conn = db.open(manager)
    manager.begin()
    return Session(conn, manager)
