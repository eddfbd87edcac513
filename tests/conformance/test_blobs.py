"""Blobs on every storage and stack: those that keep blobs (``supports_blobs``) store and
read them through amphora's Connection and through ``ZODB.DB``; every other one refuses
them with ``Unsupported`` naming itself, at commit, and writes nothing (a blob is never
lost silently)."""
from __future__ import annotations

import pytest
import transaction
import ZODB
import ZODB.POSException
from ZODB.blob import Blob

import amphora

pytestmark = pytest.mark.timeout(60)


def test_a_blob_is_kept_or_refused_naming_the_storage(storage, db):
    with db.transaction() as conn:
        conn.root.before = 1
    last = db.last_transaction()
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root.blob = Blob(b"blob data")
    if getattr(storage, "supports_blobs", False):
        tm.commit()
        with db.transaction() as other:
            with other.root.blob.open("r") as file:
                assert file.read() == b"blob data"
    else:
        with pytest.raises(amphora.Unsupported) as caught:
            tm.commit()
        tm.abort()
        assert type(storage).__name__ in str(caught.value)
        assert db.last_transaction() == last
        with db.transaction() as other:
            assert "blob" not in other.root()
    conn.close()


def test_zodb_db_keeps_or_refuses_a_blob(storage):
    database = ZODB.DB(storage)
    try:
        conn = database.open()
        conn.root.blob = Blob(b"through ZODB")
        if getattr(storage, "supports_blobs", False):
            transaction.commit()
            conn.root.blob._p_deactivate()
            with conn.root.blob.open("r") as file:
                assert file.read() == b"through ZODB"
        else:
            with pytest.raises(ZODB.POSException.Unsupported):
                transaction.commit()
            transaction.abort()
        conn.close()
    finally:
        transaction.abort()
        database.close()
