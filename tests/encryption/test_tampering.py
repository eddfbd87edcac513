"""A storage that lies: between the encryption layer and the real storage sits one that
serves records it was not given for that place. Each lie is caught with
TamperedRecordError, and nothing it served is ever unpickled."""
from __future__ import annotations

import pickle
from typing import Any, Callable

import pytest
import transaction

import amphora
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.memory import MemoryStorage
from amphora.utils import maxtid, p64, u64, z64

from .conftest import CHEAP

UNPICKLED: list[str] = []


def _unpickled(note: str) -> str:
    """What a hostile plain record calls when it is unpickled (it must never be)."""
    UNPICKLED.append(note)
    return note


class Hostile:
    """A record that runs code when unpickled: ZeroDB's plaintext passthrough."""

    def __reduce__(self):
        return (_unpickled, ("unpickled!",))


class LyingStorage:
    """Forwards to ``storage``, but serves what ``lie(oid, found)`` answers for each
    revision read (``found``: ``(data, start, end)``) once ``lie`` is set."""

    def __init__(self, storage: Any):
        self.storage = storage
        self.lie: Callable[[bytes, tuple], tuple] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def _served(self, oid: bytes, found: tuple | None) -> tuple | None:
        if found is None or self.lie is None:
            return found
        return self.lie(oid, found)

    def loadBefore(self, oid: bytes, tid: bytes) -> tuple | None:
        return self._served(oid, self.storage.loadBefore(oid, tid))

    def load_many(self, oids, before):
        return {oid: self._served(oid, found)
                for oid, found in self.storage.load_many(oids, before).items()}

    def loadSerial(self, oid: bytes, serial: bytes) -> bytes:
        return self._served(oid, (self.storage.loadSerial(oid, serial), serial, None))[0]


@pytest.fixture
def lying(keyring):
    """``(db, liar)``: a database whose root holds ``a`` and ``b`` (two objects), ``a``
    written twice, through a LyingStorage over memory."""
    liar = LyingStorage(MemoryStorage())
    db = amphora.DB(EncryptedStorage(liar, keyring))
    with db.transaction() as conn:
        conn.root.a = amphora_mapping(name="first")
        conn.root.b = amphora_mapping(name="other object")
    with db.transaction() as conn:
        conn.root.a["name"] = "second"
    yield db, liar
    liar.lie = None
    db.close()


def amphora_mapping(**items: Any) -> Any:
    from persistent.mapping import PersistentMapping
    return PersistentMapping(items)


def oid_of(db: amphora.DB, name: str) -> bytes:
    with db.transaction() as conn:
        return getattr(conn.root, name)._p_oid


def current(liar: LyingStorage, oid: bytes) -> tuple:
    return liar.storage.loadBefore(oid, maxtid)


def assert_refused(db: amphora.DB, oid: bytes, match: str) -> None:
    """Loading ``oid`` fails, at the storage and through a fresh connection."""
    with pytest.raises(amphora.TamperedRecordError, match=match):
        db.storage.loadBefore(oid, maxtid)
    with pytest.raises(amphora.TamperedRecordError, match=match):
        db.storage.load_many([oid], maxtid)
    fresh = amphora.DB(db.storage, record_cache_bytes=0)  # nothing cached: all is read
    conn = fresh.open(transaction.TransactionManager())
    try:
        with pytest.raises(amphora.TamperedRecordError, match=match):
            conn.get(oid)._p_activate()
    finally:
        conn.close()


def test_honest_records_load(lying):
    db, _ = lying
    with db.transaction() as conn:
        assert (conn.root.a["name"], conn.root.b["name"]) == ("second", "other object")


def test_a_record_swapped_between_objects(lying):
    db, liar = lying
    a, b = oid_of(db, "a"), oid_of(db, "b")
    other = current(liar, b)
    liar.lie = lambda oid, found: (other[0], found[1], found[2]) if oid == a else found
    assert_refused(db, a, "sealed for oid")
    # ... also with the other object's tid, as if it had been written there
    liar.lie = lambda oid, found: other if oid == a else found
    assert_refused(db, a, "sealed for oid")


def test_an_old_revision_served_as_current(lying):
    db, liar = lying
    a = oid_of(db, "a")
    data, start, _ = current(liar, a)
    old = liar.storage.loadBefore(a, start)
    liar.lie = lambda oid, found: (old[0], start, None) if oid == a else found
    assert_refused(db, a, "another revision")
    with pytest.raises(amphora.TamperedRecordError, match="another revision"):
        db.storage.loadSerial(a, start)


def test_a_revision_of_another_database(keyring):
    """Two databases under one keyring, a record written at the same oid and tid in
    each: the other database's is refused."""
    liar = LyingStorage(MemoryStorage())
    mine, theirs = EncryptedStorage(liar, keyring), EncryptedStorage(MemoryStorage(), keyring)
    tid = p64(u64(z64) + 0x0400000000000001)
    record = pickle.dumps(("x",), 3) + pickle.dumps({}, 3)
    for storage in (mine, theirs):
        txn = amphora.TransactionMetaData()
        storage.tpc_begin(txn, tid)
        storage.store(p64(7), z64, record, "", txn)
        storage.tpc_vote(txn)
        storage.tpc_finish(txn)
    assert mine.database_id != theirs.database_id
    assert mine.loadBefore(p64(7), maxtid)[0] == record
    foreign = theirs.storage.loadBefore(p64(7), maxtid)
    liar.lie = lambda oid, found: foreign
    with pytest.raises(amphora.TamperedRecordError, match="another database"):
        mine.loadBefore(p64(7), maxtid)
    mine.close(), theirs.close()


@pytest.mark.parametrize("cut", [1, 16, 40, 60, 75, 1000])
def test_a_truncated_record(lying, cut):
    db, liar = lying
    a = oid_of(db, "a")
    liar.lie = lambda oid, found: (found[0][:-cut], *found[1:]) if oid == a else found
    assert_refused(db, a, "not sealed|failed authentication")


@pytest.mark.parametrize("where", ["magic", "key id", "database id", "oid", "tid", "base",
                                   "nonce", "ciphertext", "tag"])
def test_a_flipped_bit(lying, where):
    db, liar = lying
    a = oid_of(db, "a")
    size = len(current(liar, a)[0])
    offset = {"magic": 1, "key id": 7, "database id": 10, "oid": 30, "tid": 37, "base": 44,
              "nonce": 50, "ciphertext": 70, "tag": size - 3}[where]

    def flip(oid: bytes, found: tuple) -> tuple:
        if oid != a:
            return found
        data = bytearray(found[0])
        data[offset] ^= 0x04
        return bytes(data), *found[1:]
    liar.lie = flip
    assert_refused(db, a, "not sealed|failed authentication|names key")


def test_a_plaintext_record_is_never_unpickled(lying):
    db, liar = lying
    a = oid_of(db, "a")
    plain = pickle.dumps((Hostile(), None), 3) + pickle.dumps(Hostile(), 3)
    pickle.loads(plain)  # the record is really hostile: unpickling it runs its code
    assert UNPICKLED == ["unpickled!"]
    UNPICKLED.clear()
    liar.lie = lambda oid, found: (plain, *found[1:]) if oid == a else found
    assert_refused(db, a, "not sealed")
    liar.lie = lambda oid, found: (b"\xa7\x5e" + plain, *found[1:]) if oid == a else found
    assert_refused(db, a, "not sealed|failed authentication|names key")
    assert UNPICKLED == []


def test_records_sealed_with_other_keys_are_refused(tmp_path, keyring):
    memory = MemoryStorage()
    db = amphora.DB(EncryptedStorage(memory, keyring))
    with db.transaction() as conn:
        conn.root.secret = "sealed"
    stranger = amphora.Keyring.create(tmp_path / "stranger", "another passphrase", CHEAP)
    with pytest.raises(amphora.TamperedRecordError, match="failed authentication"):
        EncryptedStorage(memory, stranger)
    db.close()


def test_transaction_metadata_in_the_clear_is_refused(keyring):
    memory = MemoryStorage()
    storage = EncryptedStorage(memory, keyring)
    txn = transaction.Transaction()
    txn.note("a forged note")
    memory.tpc_begin(txn)
    memory.store(p64(1), z64, pickle.dumps(("x",), 3) + pickle.dumps({}, 3), "", txn)
    memory.tpc_vote(txn)
    memory.tpc_finish(txn)
    with pytest.raises(amphora.TamperedRecordError, match="no sealed metadata"):
        list(storage.iterator())
    with pytest.raises(amphora.TamperedRecordError, match="no sealed metadata"):
        storage.history(p64(1))
