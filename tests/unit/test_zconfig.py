"""ZODB configuration files can name amphora storages (``%import amphora``)."""
import socket
import subprocess
import sys
from pathlib import Path

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


def test_runzeo_serves_a_new_amphora_database_to_zeo_clients(tmp_path):
    """``runzeo`` with an ``<amphora>`` section: the first client of an empty database makes
    its root (ZEO clients know only ZODB's exception names, so the storage raises
    ZODB's POSKeyError for a missing object), and the server logs no error."""
    import ZEO
    from ZODB.POSException import POSKeyError
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "zeo.conf"
    config.write_text(f"%import amphora\n<zeo>\n  address 127.0.0.1:{port}\n</zeo>\n"
                      f"<amphora>\n  uri sqlite:///{tmp_path / 'app.db'}\n</amphora>\n")
    runzeo = Path(sys.executable).with_name("runzeo")
    server = subprocess.Popen([str(runzeo), "-C", str(config)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        db = ZEO.DB(("127.0.0.1", port), wait_timeout=30)  # made the root: was refused
        try:
            with db.transaction() as conn:
                conn.root()["x"] = 1
            with pytest.raises(POSKeyError):
                db.storage.load(b"\0" * 7 + b"\x99")
        finally:
            db.close()
        db = ZEO.DB(("127.0.0.1", port), wait_timeout=30)
        try:
            with db.transaction() as conn:
                assert conn.root()["x"] == 1
        finally:
            db.close()
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=30)
    assert "ERROR" not in log and "Traceback" not in log, log
