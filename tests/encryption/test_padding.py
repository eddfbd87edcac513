"""Records are padded to a few bucket sizes before they are sealed: the storage below
sees bucket sizes only, and the padding is authenticated like the rest."""
from __future__ import annotations

import os

import pytest

import amphora
from amphora.storage.encrypted import (_HEADER, _TAG, FORMAT, MAGIC, RECORD,
                                       EncryptedStorage, padded_size)
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import maxtid, p64, z64

OVERHEAD = _HEADER.size + _TAG  # header and tag: the same for every record


def record(size: int) -> bytes:
    """``size`` bytes stored as a record (the storages below never read a sealed one)."""
    return os.urandom(size)


def write(storage: EncryptedStorage, records: dict[bytes, bytes]) -> None:
    txn = amphora.TransactionMetaData()
    storage.tpc_begin(txn)
    for oid, data in records.items():
        storage.store(oid, z64, data, "", txn)
    storage.tpc_vote(txn)
    storage.tpc_finish(txn)


def test_buckets_are_64_bytes_apart_below_a_kib_then_an_eighth():
    assert [padded_size(n) for n in (0, 63, 64, 127, 1023)] == [64, 64, 128, 128, 1024]
    assert [padded_size(n) for n in (1024, 1151, 1152, 2047, 2048, 4096)] == [
        1152, 1152, 1280, 2048, 2304, 4608]
    for size in range(0, 70000, 7):
        bucket = padded_size(size)
        assert size < bucket <= size + max(64, size // 8 + 1)


def test_records_of_every_length_land_on_a_few_sizes(tmp_path, keyring):
    storage = EncryptedStorage(SQLiteStorage(str(tmp_path / "pad.db")), keyring)
    sizes = range(40, 3001)
    records = {p64(size): record(size) for size in sizes}
    assert [len(data) for data in records.values()] == list(sizes)
    write(storage, records)
    stored = {len(storage.storage.loadBefore(oid, maxtid)[0]) - OVERHEAD for oid in records}
    # 2961 different lengths, 16 + 8 + 4 sizes: 64, 128, ... 1024, 1152, ... 2048, ... 3072
    assert stored == {64 * k for k in range(1, 17)} | {1024 + 128 * k for k in range(1, 9)} | {
        2048 + 256 * k for k in range(1, 5)}
    for oid, data in records.items():  # and each opens to exactly what was stored
        assert storage.loadBefore(oid, maxtid)[0] == data
    assert storage.history(p64(1000))[0]["size"] == 1000
    storage.close()


def test_changed_padding_fails_authentication(tmp_path, keyring):
    storage = EncryptedStorage(SQLiteStorage(str(tmp_path / "pad.db")), keyring)
    write(storage, {p64(1): record(100)})  # 28 bytes of padding: 0x80 then 27 zeros
    sealed, start, _ = storage.storage.loadBefore(p64(1), maxtid)
    assert len(sealed) == OVERHEAD + 128
    for where in (len(sealed) - _TAG - 1, len(sealed) - _TAG - 20):  # inside the padding
        changed = bytearray(sealed)
        changed[where] ^= 0x01
        with pytest.raises(amphora.TamperedRecordError, match="failed authentication"):
            storage._open(bytes(changed), RECORD, p64(1), start)
    storage.close()


def test_an_authentic_record_without_padding_is_refused(keyring):
    """Sealed with the right key but not padded (no 0x80 then zeros at its end)."""
    storage = EncryptedStorage(amphora.MemoryStorage(), keyring, seen_file=False)
    write(storage, {p64(1): record(100)})
    tid = storage.lastTransaction()
    salt = os.urandom(16)
    header = _HEADER.pack(MAGIC, FORMAT, RECORD, keyring.current_key_id, storage.database_id,
                          p64(2), tid, z64, salt, 0)
    unpadded = header + storage._subkey(keyring.current_key_id, salt).encrypt(
        salt[8:] + bytes(4), record(100) + b"\x80\x00\x01", header)
    with pytest.raises(amphora.TamperedRecordError, match="not padded"):
        storage._open(unpadded, RECORD, p64(2), tid)
    storage.close()


def test_every_record_of_a_large_commit_has_its_own_number(keyring):
    """The numbers of a commit's records (the nonce's last 4 bytes under its subkey) are
    made ahead for 16,384 records; a larger commit numbers the rest as it goes."""
    storage = EncryptedStorage(amphora.MemoryStorage(), keyring, seen_file=False)
    records = {p64(n): record(n % 90) for n in range(1, 20_001)}
    write(storage, records)
    sealed = [storage.storage.loadBefore(oid, maxtid)[0] for oid in records]
    numbers = [_HEADER.unpack_from(data)[9] for data in sealed]
    assert sorted(numbers) == list(range(len(records)))
    assert len({data[48:64] for data in sealed}) == 1  # one salt: one subkey for the commit
    for oid, data in records.items():
        assert storage.loadBefore(oid, maxtid)[0] == data
    storage.close()
