"""ZODB configuration files can name amphora storages (``%import amphora``)."""
import pytest
import transaction

import amphora

ZODB_config = pytest.importorskip("ZODB.config", reason="ZODB is not installed")


def test_a_zodb_config_file_opens_an_amphora_sqlite_storage(tmp_path):
    path = tmp_path / "app.db"
    db = ZODB_config.databaseFromString(f"""
        %import amphora
        <zodb>
          <amphora>
            uri sqlite:///{path}
          </amphora>
        </zodb>
    """)
    try:
        with db.transaction() as conn:
            conn.root()["greeting"] = "hello from ZODB"
    finally:
        db.close()
    with amphora.open(f"sqlite:///{path}") as reopened:
        with reopened.transaction() as conn:
            assert conn.root.greeting == "hello from ZODB"


def test_a_read_only_section_refuses_writes(tmp_path):
    path = tmp_path / "app.db"
    amphora.open(f"sqlite:///{path}").close()
    storage = ZODB_config.storageFromString(f"""
        %import amphora
        <amphora>
          uri sqlite:///{path}
          read-only true
        </amphora>
    """)
    try:
        assert storage.isReadOnly()
        with pytest.raises(amphora.ReadOnlyError):
            storage.tpc_begin(transaction.Transaction())
    finally:
        storage.close()


def test_a_bad_uri_in_a_config_file_is_an_invalid_uri_error():
    with pytest.raises(amphora.InvalidURIError):
        ZODB_config.storageFromString("""
            %import amphora
            <amphora>
              uri nosuch://x
            </amphora>
        """)
