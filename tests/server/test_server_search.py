"""Searching through ``amphora serve``: errors come back as the storage's own, a read-only
token searches but changes nothing, the server's ``search_timeout`` stops a slow query
while others are served, and a PostgreSQL ``search_role`` confines what client SQL reads.
(The search suite itself runs on client->sqlite and client->postgresql: tests/search.)"""
from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path

import pytest

import amphora
from amphora.errors import InvalidQueryError, MirrorError, ReadOnlyError
from amphora.server import protocol as p
from amphora.storage.postgresql import PostgreSQLStorage
from amphora.storage.sqlite import SQLiteStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pgserver  # noqa: E402
from conformance.models import Item  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import RawClient  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# Counts to a billion: minutes, unless cancelled
SLOW_QUERY = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
              " WHERE i < 1000000000) SELECT count(*) FROM n")


def people(db) -> None:
    with db.transaction() as conn:
        for name in ("Ann", "Bob", "Cid"):
            conn.root()[name] = Item(name, email=f"{name.lower()}@example.com")


def served_sqlite(servers, tmp_path, *args: str):
    """A server of a SQLite file with a mirror and three people."""
    path = tmp_path / "served.db"
    storage = SQLiteStorage(str(path))
    db = amphora.DB(storage)
    people(db)
    db.create_mirror()
    db.close()
    return servers(f"sqlite:///{path}", *args)


def tokens(tmp_path) -> list[str]:
    """``--token-file F --read-only-token-file G`` for the tokens ``writer`` and ``reader``."""
    (tmp_path / "writer").write_text("writer-token\n")
    (tmp_path / "reader").write_text("reader-token\n")
    return ["--token-file", str(tmp_path / "writer"),
            "--read-only-token-file", str(tmp_path / "reader")]


def test_a_refused_query_comes_back_as_the_storages_own_error(servers, tmp_path):
    server = served_sqlite(servers, tmp_path)
    db = amphora.open(f"amphora://{server.address}")
    try:
        conn = db.open()
        with pytest.raises(InvalidQueryError, match="nonsense_column"):
            conn.where("nonsense_column = 1")
        with pytest.raises(InvalidQueryError, match="no text index|no such table"):
            conn.search_text("no_such_index", "python")
        # the connection and the server go on
        assert [item.value for item in conn.where("state->>'email' = %s",
                                                  "bob@example.com")] == ["Bob"]
        conn.close()
        db.drop_mirror()
        with pytest.raises(MirrorError, match="no JSON mirror"):
            db.query_data("SELECT 1")
    finally:
        db.close()


def test_a_server_of_a_storage_without_a_mirror_says_so(servers):
    server = servers("memory://")
    db = amphora.open(f"amphora://{server.address}")
    try:
        assert not db.storage.supports_mirror and not db.has_mirror()
        with pytest.raises(MirrorError, match="MemoryStorage cannot keep a JSON mirror"):
            db.storage.query_mirror("SELECT 1")  # the server's answer, as the storage says
    finally:
        db.close()


def test_a_read_only_token_may_search_but_not_change_the_mirror(servers, tmp_path):
    server = served_sqlite(servers, tmp_path, *tokens(tmp_path))
    writer = amphora.open(f"amphora://{server.address}", token="writer-token")
    reader = amphora.open(f"amphora://{server.address}", token="reader-token")
    try:
        writer.create_index("item_email", "state->>'email'")  # a writable token may
        assert reader.storage.isReadOnly()
        conn = reader.open()
        assert [item.value for item in conn.where("state->>'email' = %s",
                                                  "ann@example.com")] == ["Ann"]
        assert reader.query_data("SELECT count(*) FROM amphora_objects") == [(4,)]
        conn.close()
        with pytest.raises(ReadOnlyError):
            reader.create_index("item_name", "state->>'value'")
        # the server refuses too, whatever a client claims
        raw = RawClient(server, token="reader-token")
        assert raw.welcome[1]["read_only"] is True
        for method, args in ((p.CREATE_MIRROR_INDEX, ["item_name", "1", None, False]),
                             (p.DROP_MIRROR, []), (p.CREATE_MIRROR, ["sync"])):
            request_id = raw.request(method, *args)
            assert raw.next()[:3] == [p.ERROR, request_id, "ReadOnlyError"]
        request_id = raw.request(p.QUERY_MIRROR, "SELECT count(*) FROM amphora_objects",
                                 [], None, None)
        assert raw.next() == [p.REPLY, request_id, [[4]]]
        raw.close()
        assert writer.has_mirror()
        assert [row[0] for row in writer.query_data(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'item_%'")] \
            == ["item_email"]
    finally:
        reader.close()
        writer.close()


def test_the_search_timeout_stops_a_slow_query_and_others_are_served(servers, tmp_path):
    server = served_sqlite(servers, tmp_path, "--search-timeout", "6")
    slow_db = amphora.open(f"amphora://{server.address}")
    other = amphora.open(f"amphora://{server.address}")
    outcome: list = []

    def slow() -> None:
        try:
            outcome.append(slow_db.query_data(SLOW_QUERY))
        except Exception as exc:
            outcome.append(exc)
    thread = threading.Thread(target=slow)
    try:
        thread.start()
        conn = other.open()  # loads and searches are answered meanwhile
        assert [item.value for item in conn.where("1 = 1", class_name=Item.__module__
                                                  + ".Item")] == ["Ann", "Bob", "Cid"]
        with other.transaction() as writing:
            writing.root()["Dee"] = Item("Dee")
        conn.close()
        assert thread.is_alive()  # (6 s to spare)
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(outcome[0], InvalidQueryError) and "timeout" in str(outcome[0])
        assert slow_db.query_data("SELECT count(*) FROM amphora_objects") == [(5,)]
    finally:
        thread.join(60)
        slow_db.close()
        other.close()


# -- PostgreSQL: a search role ----------------------------------------------------------------

def test_a_search_role_confines_client_sql_to_the_storages_schema(servers, tmp_path):
    pg = pgserver.require()
    schema = pgserver.schema_for(str(tmp_path / "served"))
    other = pgserver.schema_for(str(tmp_path / "other"))
    role = f"amphora_search_{uuid.uuid4().hex[:8]}"
    for name in (schema, other):
        pg.remember_schema(name)
    storage = PostgreSQLStorage(pg.dsn(), schema=schema)
    db = amphora.DB(storage)
    people(db)
    db.create_mirror()
    db.close()
    with pg.connect() as admin:
        admin.execute(f"CREATE SCHEMA {other}")
        admin.execute(f"CREATE TABLE {other}.secrets (secret text)")
        admin.execute(f"INSERT INTO {other}.secrets VALUES ('the launch codes')")
        # as docs/server.md tells: a role that may read the storage's schema, no more
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        admin.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema}"
                      f" GRANT SELECT ON TABLES TO {role}")
        admin.execute(f"GRANT {role} TO CURRENT_USER")
    try:
        server = servers(pg.uri(schema=schema, search_role=role))
        client = amphora.open(f"amphora://{server.address}")
        try:
            conn = client.open()
            assert [item.value for item in conn.where(
                "state->>'email' = %s", "cid@example.com")] == ["Cid"]
            conn.close()
            with pytest.raises(InvalidQueryError, match="permission denied"):
                client.query_data(f"SELECT secret FROM {other}.secrets")
            with pytest.raises(InvalidQueryError, match="permission denied"):
                client.query_data("SELECT pg_read_file('PG_VERSION')")
            assert client.query_data("SELECT count(*) FROM amphora_objects") == [(4,)]
        finally:
            client.close()
            server.stop()
    finally:
        with pg.connect() as admin:
            admin.execute(f"REVOKE {role} FROM CURRENT_USER")
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
