"""zodburi opens amphora storages: ``zodburi.resolve_uri`` finds amphora's resolvers by
the URI's scheme (entry points), and the factory it returns opens the storage, on which
``ZODB.DB`` works as configured by the URI's database keywords."""
from __future__ import annotations

import pgserver
import pytest
import serverprocess
import transaction

import amphora
from amphora.errors import InvalidURIError

zodburi = pytest.importorskip("zodburi", reason="zodburi is a test dependency")

pytestmark = pytest.mark.timeout(120)


def _uris(tmp_path):
    server = serverprocess.shared_server("sqlite")  # a real `amphora serve` process
    return {
        "amphora+sqlite": (f"amphora+sqlite:///{tmp_path}/app.db", "SQLiteStorage"),
        "amphora+memory": ("amphora+memory://", "MemoryStorage"),
        "postgresql": (pgserver.schema_uri(str(tmp_path / "app")), "PostgreSQLStorage"),
        "amphora+postgresql": (pgserver.schema_uri(str(tmp_path / "other")).replace(
            "postgresql://", "amphora+postgresql://", 1), "PostgreSQLStorage"),
        "amphora": (f"amphora://{server.address}/{serverprocess.storage_name(tmp_path / 'z')}",
                    "ClientStorage"),
    }


@pytest.mark.parametrize("scheme", ["amphora+sqlite", "amphora+memory", "postgresql",
                                    "amphora+postgresql", "amphora"])
def test_resolve_uri_opens_each_storage_kind_for_zodb(scheme, tmp_path):
    import ZODB
    uri, class_name = _uris(tmp_path)[scheme]
    separator = "&" if "?" in uri else "?"
    factory, dbkw = zodburi.resolve_uri(
        f"{uri}{separator}database_name=main&connection_cache_size=123")
    assert dbkw["database_name"] == "main" and dbkw["cache_size"] == 123
    storage = factory()
    assert type(storage).__name__ == class_name
    assert isinstance(storage, amphora.Storage)
    db = ZODB.DB(storage, **dbkw)
    try:
        with db.transaction() as conn:
            conn.root()["greeting"] = "hello"
        with db.transaction() as conn:
            assert conn.root()["greeting"] == "hello"
        assert db.database_name == "main"
    finally:
        db.close()
    transaction.abort()


def test_storage_options_stay_in_the_uri_and_a_database_keyword_is_checked(tmp_path):
    factory, dbkw = zodburi.resolve_uri(
        f"amphora+sqlite:///{tmp_path}/app.db?keep_history=false&connection_pool_size=3")
    assert dbkw["pool_size"] == 3
    storage = factory()
    try:
        assert storage.keep_history is False
    finally:
        storage.close()
    with pytest.raises(KeyError, match="connection_nonsense"):
        zodburi.resolve_uri("amphora+memory://?connection_nonsense=1")


def test_a_bad_uri_is_refused_naming_it(tmp_path):
    factory, _ = zodburi.resolve_uri("amphora+sqlite:///app.db?no_such_option=1")
    with pytest.raises(InvalidURIError, match="no_such_option"):
        factory()
    from amphora.zodburi import resolve
    with pytest.raises(InvalidURIError, match="not a storage URI"):
        resolve("amphora+sqlite")
