"""Blobs under encryption: each blob file is sealed in chunks before the storage under it
keeps it, opened into this client's own directory, and refused when cut, reordered,
swapped or changed; ZODB's blob suite passes over encrypted(sqlite); a key rotation seals
the current blobs again."""
from __future__ import annotations

import os
import stat

import pytest

import amphora
from amphora import Blob
from amphora.crypto.rotation import rotate
from amphora.crypto.padding import padded_size
from amphora.crypto.sealed_blobs import CHUNK, open_blob_file
from amphora.storage.blobs import BlobFileError
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import oid_repr, tid_repr

from .conftest import CHEAP, PASSPHRASE

SIZES = {"0 bytes": 0, "1 byte": 1, "3 chunks and a bit": 3 * CHUNK + 5}
_HEADER, _TAG = 56, 16


def pattern(size: int) -> bytes:
    """Plaintext that is easy to find: a 16-byte marker over and over."""
    return (b"PLAINTEXT-MARKER" * (size // 16 + 1))[:size]


def encrypted_db(tmp_path, keyring) -> amphora.DB:
    return amphora.DB(EncryptedStorage(SQLiteStorage(str(tmp_path / "app.db")), keyring,
                                       seen_file=False))


def stored(tmp_path, keyring, data: bytes) -> tuple[bytes, bytes, str]:
    """Commit a blob holding ``data``; its oid, tid and the base's (sealed) file."""
    db = encrypted_db(tmp_path, keyring)
    with db.transaction() as conn:
        conn.root.blob = Blob(data)
    with db.transaction() as conn:
        oid, tid = conn.root.blob._p_oid, conn.root.blob._p_serial
    sealed = db.storage.storage.loadBlob(oid, tid)
    db.close()
    return oid, tid, sealed


def read_back(tmp_path, keyring) -> bytes:
    """The blob read by a new client (nothing opened before)."""
    db = encrypted_db(tmp_path, keyring)
    try:
        with db.transaction() as conn:
            with conn.root.blob.open("r") as file:
                return file.read()
    finally:
        db.close()


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_blob_is_sealed_in_chunks_and_read_back(size, tmp_path, keyring):
    data = pattern(size)
    _, _, sealed = stored(tmp_path, keyring, data)
    with open(sealed, "rb") as file:
        content = file.read()
    padded = padded_size(size)  # the blob, the mark 0x80, zeros up to its bucket
    chunks = -(-padded // CHUNK)
    assert len(content) == _HEADER + padded + chunks * _TAG
    assert b"PLAINTEXT-MARKER" not in content and b"MARKER" not in content
    assert read_back(tmp_path, keyring) == data


def test_the_plaintext_stays_in_the_clients_directory(tmp_path, keyring):
    db = encrypted_db(tmp_path, keyring)
    storage = db.storage
    with db.transaction() as conn:
        conn.root.blob = Blob(pattern(1000))
    cache = os.path.dirname(storage.temporaryDirectory())
    assert not cache.startswith(str(tmp_path / "app.db.blobs"))
    for parent, _, names in os.walk(tmp_path / "app.db.blobs"):
        for name in names:
            with open(os.path.join(parent, name), "rb") as file:
                assert b"MARKER" not in file.read()
    db.close()
    assert not os.path.exists(cache)  # the opened files go with the storage


def _tamper(path: str, change) -> None:
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(change(content))


TRUNCATIONS = {
    "at a chunk boundary": lambda c: c[:_HEADER + CHUNK + _TAG],
    "inside a chunk": lambda c: c[:-7],
    "to its header": lambda c: c[:_HEADER],
    "inside its header": lambda c: c[:20],
}


@pytest.mark.parametrize("cut", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
def test_a_truncated_sealed_blob_is_refused_naming_oid_and_tid(cut, tmp_path, keyring):
    # The storage under the encryption catches a file of the wrong size first (it knows
    # the size it committed); the seal catches it without that, as here.
    oid, tid, sealed = stored(tmp_path, keyring, pattern(3 * CHUNK + 5))
    with open(sealed, "rb") as file:
        (tmp_path / "cut").write_bytes(cut(file.read()))
    storage = EncryptedStorage(SQLiteStorage(str(tmp_path / "app.db")), keyring,
                               seen_file=False)
    try:
        with pytest.raises(amphora.TamperedRecordError) as caught:
            open_blob_file(str(tmp_path / "cut"), str(tmp_path / "opened"),
                           storage._blob_cipher, storage.database_id, oid, tid)
    finally:
        storage.close()
    assert oid_repr(oid) in str(caught.value) and tid_repr(tid) in str(caught.value)
    assert not (tmp_path / "opened").exists()  # nothing of it is returned
    with pytest.raises(BlobFileError, match="truncated"):  # and through the storage
        _tamper(sealed, cut)
        read_back(tmp_path, keyring)


CHANGES = {
    "chunks swapped": lambda c: (c[:_HEADER] + c[_HEADER + CHUNK + _TAG:_HEADER + 2 * (CHUNK + _TAG)]
                                 + c[_HEADER:_HEADER + CHUNK + _TAG]
                                 + c[_HEADER + 2 * (CHUNK + _TAG):]),
    "a byte changed": lambda c: c[:_HEADER + 100] + bytes([c[_HEADER + 100] ^ 1]) + c[_HEADER + 101:],
    "the header's key id changed": lambda c: c[:4] + b"\0\0\0\x09" + c[8:],
    "stored in the clear": lambda c: pattern(len(c)),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_damaged_sealed_blob_is_refused_naming_oid_and_tid(change, tmp_path, keyring):
    oid, tid, sealed = stored(tmp_path, keyring, pattern(3 * CHUNK + 5))
    _tamper(sealed, change)
    with pytest.raises(amphora.TamperedRecordError) as caught:
        read_back(tmp_path, keyring)
    assert oid_repr(oid) in str(caught.value) and tid_repr(tid) in str(caught.value)


def test_a_blob_file_served_for_another_object_is_refused(tmp_path, keyring):
    db = encrypted_db(tmp_path, keyring)
    with db.transaction() as conn:
        conn.root.one, conn.root.two = Blob(b"one"), Blob(b"two")
    with db.transaction() as conn:
        one = (conn.root.one._p_oid, conn.root.one._p_serial)
        two = (conn.root.two._p_oid, conn.root.two._p_serial)
    inner = db.storage.storage
    one_file, two_file = inner.loadBlob(*one), inner.loadBlob(*two)
    db.close()
    with open(two_file, "rb") as file:
        swapped = file.read()
    _tamper(one_file, lambda _: swapped)
    db = encrypted_db(tmp_path, keyring)
    try:
        with pytest.raises(amphora.TamperedRecordError, match="swapped between objects"):
            with db.transaction() as conn:
                conn.root.one.open("r").close()
        with db.transaction() as conn:  # the other one is intact
            with conn.root.two.open("r") as file:
                assert file.read() == b"two"
    finally:
        db.close()


def test_a_rotation_seals_the_current_blobs_with_the_new_key(tmp_path, keyring):
    db = encrypted_db(tmp_path, keyring)
    with db.transaction() as conn:
        conn.root.blob = Blob(pattern(CHUNK + 1))
    old_key = keyring.current_key_id
    stats = rotate(db.storage)
    assert keyring.current_key_id != old_key and stats.resealed >= 2
    with db.transaction() as conn:
        oid = conn.root.blob._p_oid
    tid = db.storage.load(oid)[1]  # the rotation's revision
    with open(db.storage.storage.loadBlob(oid, tid), "rb") as file:
        assert int.from_bytes(file.read(8)[4:8], "big") == keyring.current_key_id
    db.close()
    assert read_back(tmp_path, keyring) == pattern(CHUNK + 1)
    # the old revision's file, sealed with the old key, stays readable with the keyring
    reopened = amphora.Keyring.unlock(tmp_path / "app.keyring", PASSPHRASE)
    storage = EncryptedStorage(SQLiteStorage(str(tmp_path / "app.db")), reopened,
                               seen_file=False)
    try:
        first = storage.history(oid, None)[-1]["tid"]
        with open(storage.loadBlob(oid, first), "rb") as file:
            assert file.read() == pattern(CHUNK + 1)
    finally:
        storage.close()


def test_blob_sizes_are_padded_to_buckets(tmp_path, keyring):
    """The storage sees the bucket of a blob's size, not the size: blobs of 70,000 and
    73,000 bytes have sealed files of one size; one of 74,000 bytes is a bucket above."""
    db = encrypted_db(tmp_path, keyring)
    sizes = (70_000, 73_000, 74_000)
    with db.transaction() as conn:
        conn.root.blobs = [Blob(pattern(size)) for size in sizes]
    with db.transaction() as conn:
        files = [db.storage.storage.loadBlob(blob._p_oid, blob._p_serial)
                 for blob in conn.root.blobs]
    sealed = [os.path.getsize(path) for path in files]
    assert sealed[0] == sealed[1] < sealed[2]
    assert sealed[0] == _HEADER + padded_size(73_000) + 2 * _TAG  # 73,728 bytes in 2 chunks
    with db.transaction() as conn:
        assert [len(blob.open("r").read()) for blob in conn.root.blobs] == list(sizes)
    db.close()


ENDINGS = {
    "zeros across chunks": bytes(2 * CHUNK + 3),
    "its own 0x80 and zeros": b"data" + b"\x80" + bytes(10),
    "0x80 last": pattern(CHUNK - 1) + b"\x80",
    "a chunk exactly": pattern(CHUNK),
}


@pytest.mark.parametrize("data", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_blob_ending_like_padding_opens_whole(data, tmp_path, keyring):
    stored(tmp_path, keyring, data)
    assert read_back(tmp_path, keyring) == data


def _seal_by_hand(storage: EncryptedStorage, oid: bytes, tid: bytes, version: int,
                  plain: bytes, path: str) -> None:
    """A sealed blob file of format ``version`` holding ``plain`` as it is (no padding
    added), in chunks as sealed_blobs cuts them."""
    from amphora.crypto.sealed_blobs import _HEADER as HEADER
    salt = os.urandom(16)
    key_id = storage.keyring.current_key_id
    cipher = storage._subkey(key_id, salt)
    header = HEADER.pack(b"\xa7\x5e", version, b"B", key_id, storage.database_id, oid, tid,
                         salt)
    chunks = [plain[start:start + CHUNK] for start in range(0, len(plain), CHUNK)] or [b""]
    with open(path, "wb") as file:
        file.write(header)
        for number, chunk in enumerate(chunks):
            count = number.to_bytes(4, "big")
            final = b"\x01" if number == len(chunks) - 1 else b"\x00"
            file.write(cipher.encrypt(salt[8:] + count, chunk, header + count + final))


def test_a_file_sealed_before_padding_opens_and_one_without_its_padding_is_refused(
        tmp_path, keyring):
    oid, tid, _ = stored(tmp_path, keyring, b"x")
    storage = EncryptedStorage(SQLiteStorage(str(tmp_path / "app.db")), keyring,
                               seen_file=False)
    data = pattern(CHUNK + 100)
    try:
        _seal_by_hand(storage, oid, tid, 1, data, str(tmp_path / "format1"))
        open_blob_file(str(tmp_path / "format1"), str(tmp_path / "opened1"),
                       storage._blob_cipher, storage.database_id, oid, tid)
        assert (tmp_path / "opened1").read_bytes() == data  # format 1: not padded
        _seal_by_hand(storage, oid, tid, 2, data, str(tmp_path / "unpadded"))
        with pytest.raises(amphora.TamperedRecordError, match="not padded"):
            open_blob_file(str(tmp_path / "unpadded"), str(tmp_path / "opened2"),
                           storage._blob_cipher, storage.database_id, oid, tid)
        assert not (tmp_path / "opened2").exists()
    finally:
        storage.close()
