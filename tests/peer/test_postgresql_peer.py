"""ZODB's own storage test mixins, run against amphora's PostgreSQL storage.

Every test gets a schema of its own in the test server's database (dropped in
``tearDown``). ``_new_storage_client`` opens a second storage object on the same schema:
ZODB's race tests then check that commits made through one reach the other's database as
invalidations (``sync``), as they would from another process.
"""
import unittest

import pgserver
from peer_mixins import HistoryFreePeer, HistoryPreservingPeer, UndoPeer
from ZODB.tests import StorageTestBase

from amphora.storage.postgresql import PostgreSQLStorage


def _server() -> pgserver.PostgresServer:
    """The session's server; a skip (an error under CI) when there is none."""
    try:
        return pgserver.server()
    except pgserver.PostgresUnavailable as exc:
        if pgserver.in_ci():
            raise
        raise unittest.SkipTest(f"no PostgreSQL server for the tests: {exc}") from exc


class PostgreSQLOpening:
    """Opens the storages of a ``StorageTestBase`` test (a mixin before it), each test in a
    schema of its own."""

    keep_history = True
    use_extension_bytes = True  # extension bytes are stored verbatim

    def setUp(self):
        super().setUp()
        self.server = _server()
        self.schema = pgserver.schema_for(self.id())
        self.server.remember_schema(self.schema)
        self.open()

    def tearDown(self):
        super().tearDown()
        self.server.drop_schemas()

    def open(self, read_only=False, **kw):
        self._storage = PostgreSQLStorage(self.server.dsn(), read_only=read_only,
                                          keep_history=self.keep_history, schema=self.schema,
                                          **kw)

    def _new_storage_client(self):
        return PostgreSQLStorage(self.server.dsn(), keep_history=self.keep_history,
                                 schema=self.schema)


class PostgreSQLPeerTests(PostgreSQLOpening, StorageTestBase.StorageTestBase, UndoPeer,
                          HistoryPreservingPeer):
    """A history-preserving database."""


class PostgreSQLHistoryFreePeerTests(PostgreSQLOpening, StorageTestBase.StorageTestBase,
                                     HistoryFreePeer):
    """A history-free database (``keep_history=False``)."""

    keep_history = False

