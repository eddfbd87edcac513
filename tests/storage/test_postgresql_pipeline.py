"""A statement that fails in one of psycopg's pipelines is reported once: as the error it
is, without psycopg's warning about closing the aborted pipeline (which a command would
print as a second line; see ``_pipelined`` in the PostgreSQL mirror)."""
from __future__ import annotations

import logging

import pytest

import pgserver
from amphora.storage.postgresql.mirror import _pipelined


def test_an_error_inside_a_pipeline_is_the_one_error(caplog):
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL needs psycopg")
    server = pgserver.require()
    with server.connect() as conn:
        def failing():
            conn.execute("SELECT no_such_column FROM pg_class")
            # fetching a later answer brings the error in: it surfaces inside the block,
            # and closing the aborted pipeline fails again
            return conn.execute("SELECT 3").fetchone()
        with caplog.at_level(logging.WARNING, logger="psycopg"):
            with pytest.raises(psycopg.errors.UndefinedColumn):
                _pipelined(conn, failing)
        assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
        assert _pipelined(conn, lambda: conn.execute("SELECT 2")).fetchone() == (2,)
