"""The SQL of a search only reads: what would write, attach files, change the session's
settings or outlive the query is refused or undone, a timeout cancels a slow query, and
searches keep working afterwards (SQLite and PostgreSQL)."""
from __future__ import annotations

import secrets

import pgserver
import pytest
import transaction

import amphora
from amphora import InvalidQueryError

from conformance.models import Item

pytestmark = pytest.mark.timeout(60)

COUNT = "SELECT count(*) FROM amphora_objects WHERE class_name = %s"
ITEM = "conformance.models.Item"


def mirrored(storage) -> amphora.DB:
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root()["Ann"] = Item("Ann", email="ann@example.com")
        conn.root()["Bob"] = Item("Bob", email="bob@example.org")
    db.create_mirror()
    return db


def still_searching(db: amphora.DB) -> None:
    assert db.query_data(COUNT, ITEM) == [(2,)]
    conn = db.open()
    try:
        assert [p.value for p in conn.where("state->>'email' LIKE %s", "%.com")] == ["Ann"]
    finally:
        conn.close()


# -- SQLite -------------------------------------------------------------------------------

@pytest.fixture
def sqlite_db(tmp_path):
    db = mirrored(amphora.open(f"sqlite:///{tmp_path / 'data.db'}").storage)
    yield db
    db.close()


def test_sqlite_refuses_attach_and_creates_no_file(sqlite_db, tmp_path):
    evil = tmp_path / "evil.db"
    with pytest.raises(InvalidQueryError, match="not authorized"):
        sqlite_db.query_data(f"ATTACH DATABASE '{evil}' AS e")
    assert not evil.exists()
    with pytest.raises(InvalidQueryError, match="not authorized"):
        sqlite_db.query_data("DETACH DATABASE temp")
    still_searching(sqlite_db)


@pytest.mark.parametrize("statement", ["PRAGMA query_only = 0", "PRAGMA case_sensitive_like = 1",
                                       "BEGIN", "SAVEPOINT s",
                                       "CREATE TEMP VIEW amphora_objects AS SELECT 1 AS oid"])
def test_sqlite_refuses_settings_transactions_and_temporary_objects(sqlite_db, statement):
    with pytest.raises(InvalidQueryError):
        sqlite_db.query_data(statement)
    still_searching(sqlite_db)
    assert sqlite_db.query_data("PRAGMA table_info(objects)")  # reading pragmas is fine


def test_sqlite_timeout_cancels_a_slow_query(sqlite_db):
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
            " SELECT count(*) FROM n")
    with pytest.raises(InvalidQueryError, match="timeout of 0.2 s"):
        sqlite_db.storage.query_mirror(slow, timeout=0.2)
    with pytest.raises(InvalidQueryError, match="timeout must be"):
        sqlite_db.storage.query_mirror(COUNT, [ITEM], timeout=0)
    still_searching(sqlite_db)
    assert sqlite_db.storage.query_mirror(COUNT, [ITEM], timeout=5) == [(2,)]


# -- PostgreSQL ---------------------------------------------------------------------------

@pytest.fixture
def server():
    return pgserver.require()


@pytest.fixture
def schema(server, request) -> str:
    name = pgserver.schema_for(request.node.nodeid)
    server.remember_schema(name)
    return name


@pytest.fixture
def pg_open(server, schema):
    dbs = []

    def open_db(**options) -> amphora.DB:
        db = amphora.open(server.uri(schema=schema, **options))
        dbs.append(db)
        return db
    yield open_db
    for db in dbs:
        db.close()


def test_postgresql_set_config_does_not_stick_to_the_session(pg_open):
    db = mirrored(pg_open().storage)
    assert db.query_data("SELECT set_config('search_path', 'public', false)") == [("public",)]
    assert db.query_data("SELECT current_setting('search_path')") != [("public",)]
    still_searching(db)


def test_postgresql_lo_create_leaves_no_large_object(pg_open, server):
    db = mirrored(pg_open().storage)
    with server.connect() as admin:
        before = admin.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        try:
            db.query_data("SELECT lo_create(0)")
        except InvalidQueryError:
            pass  # refused outright: as good
        after = admin.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    assert after == before
    with pytest.raises(InvalidQueryError, match="multiple commands|syntax"):
        db.query_data("SELECT 1; SET search_path = public")  # one statement only
    still_searching(db)


def test_postgresql_timeout_cancels_a_slow_query(pg_open):
    db = mirrored(pg_open().storage)
    with pytest.raises(InvalidQueryError, match="timeout of 0.2 s"):
        db.storage.query_mirror("SELECT pg_sleep(5)", timeout=0.2)
    still_searching(db)
    assert db.query_data("SHOW statement_timeout") == [("0",)]  # it went with the query


@pytest.fixture
def search_role(server, schema):
    """A role that may read the mirror of the test's schema and nothing else."""
    role = f"amphora_search_{secrets.token_hex(4)}"
    with server.connect() as admin:
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
    yield role
    with server.connect() as admin:
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def test_postgresql_search_role_confines_the_query(pg_open, server, schema, search_role):
    writer = mirrored(pg_open().storage)
    with server.connect() as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {search_role}")
        admin.execute(f"GRANT SELECT ON {schema}.amphora_objects TO {search_role}")
        admin.execute("CREATE SCHEMA IF NOT EXISTS amphora_other")
        admin.execute("CREATE TABLE IF NOT EXISTS amphora_other.secret (x int)")
    db = pg_open(search_role=search_role)
    assert db.storage.search_role == search_role
    assert db.query_data("SELECT current_user") == [(search_role,)]
    with pytest.raises(InvalidQueryError, match="permission denied"):
        db.query_data("SELECT count(*) FROM amphora_other.secret")
    with pytest.raises(InvalidQueryError, match="permission denied"):
        db.query_data("SELECT pg_read_file('PG_VERSION')")
    still_searching(db)
    # a search at a snapshot, with an overlay, under the role
    manager = transaction.TransactionManager()
    reader = db.open(manager)
    manager.begin()
    with writer.transaction() as conn:
        conn.root()["Ann"].email = "ann@example.org"
    assert [p.value for p in reader.where("state->>'email' LIKE %s", "%.com")] == ["Ann"]
    manager.abort()
    reader.close()
    with pytest.raises(amphora.InvalidURIError, match="search_role"):
        pg_open(search_role="Robert'); DROP")
