"""Blob files sealed in chunks: what :class:`~amphora.storage.encrypted.EncryptedStorage`
hands the storage under it as a blob's file, and opens again into a local file.

A blob may be larger than memory, so its file is sealed as it is read, 64 KiB at a time,
each chunk with AES-256-GCM under a subkey of a data key, derived as a record's subkey is
(BLAKE2b keyed with the data key, with a random 16-byte salt drawn for this file alone).
The sealed file::

    magic (2 bytes: A7 5E) | format (1: 2) | kind (1: "B") | key id (4, big-endian)
    | database id (16) | oid (8) | tid (8) | salt (16)
    then, for each chunk: ciphertext of up to 64 KiB | tag (16)

**Padding.** What is sealed is the blob's bytes, then the padding a record gets (the byte
0x80, then zeros up to the bucket of :func:`~amphora.crypto.padding.padded_size`: at most
64 bytes more below 1 KiB, at most 12.5% more above), cut into chunks of 64 KiB: the
storage sees the bucket of a blob's size, never the size. Opening writes every chunk, then
cuts the file at the last 0x80 (a file whose last byte other than zero is not 0x80 is
refused). Files of format 1, sealed before blobs were padded, hold the blob's bytes only;
they open as they are.

Chunk ``n`` (from 0) is sealed with the nonce ``salt[8:] | n`` (4 bytes, big-endian) and
the associated data ``header | n | final`` (``final`` one byte: 1 for the last chunk, else
0). Every file has at least one chunk. So a file
cut at a chunk boundary (its last chunk is not marked final), chunks reordered, dropped
or swapped (each names its number), a chunk or the header changed, a file served for
another oid, revision or database (the header is in every chunk's associated data), and
a file sealed with a key the keyring lacks are all refused with
:class:`~amphora.errors.TamperedRecordError` naming the oid and the tid, and nothing is
returned of a file that does not open whole.
"""
from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO, Callable, Iterator

from cryptography.exceptions import InvalidTag

from amphora.crypto.padding import MARK, padded_size
from amphora.errors import KeyringError, TamperedRecordError
from amphora.utils import oid_repr, tid_repr

__all__ = ["CHUNK", "seal_blob_file", "open_blob_file"]

MAGIC = b"\xa7\x5e"
FORMAT = 2  # padded; format 1 files (not padded) still open
_FORMATS = (1, 2)
BLOB = b"B"
CHUNK = 64 * 1024  #: plaintext bytes per sealed chunk
_TAG = 16
_SALT = 16
# magic, format, kind, key id, database id, oid, tid, salt
_HEADER = struct.Struct(">2sBcI16s8s8s16s")
_FINAL, _NOT_FINAL = b"\x01", b"\x00"
_MAX_CHUNKS = 1 << 32


def _read_full(file: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the file."""
    parts, left = [], size
    while left:
        part = file.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _padded_chunks(plain: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """``(chunk, final)`` of the file ``plain`` then its padding, in chunks of CHUNK
    bytes (the last one shorter, never empty), read as they are sealed."""
    size = 0
    chunk = _read_full(plain, CHUNK)
    while len(chunk) == CHUNK:
        following = _read_full(plain, CHUNK)
        if not following:
            break
        size += CHUNK
        yield chunk, _NOT_FINAL
        chunk = following
    size += len(chunk)
    padding = padded_size(size) - size  # the mark and the zeros, at most 12.5% of size
    chunk += MARK + bytes(min(padding, CHUNK) - 1)
    padding -= min(padding, CHUNK)
    while padding or len(chunk) > CHUNK:
        yield chunk[:CHUNK], _NOT_FINAL
        chunk = chunk[CHUNK:] + bytes(min(padding, CHUNK))
        padding -= min(padding, CHUNK)
    yield chunk, _FINAL


def seal_blob_file(source: str, target: str, cipher: Any, key_id: int, salt: bytes,
                   database_id: bytes, oid: bytes, tid: bytes) -> None:
    """Seal the file ``source``, padded, into the new file ``target``, chunk by chunk, as
    the blob revision ``tid`` of ``oid``; ``cipher`` is the AES-GCM of the subkey ``salt``
    names under the data key ``key_id``."""
    header = _HEADER.pack(MAGIC, FORMAT, BLOB, key_id, database_id, oid, tid, salt)
    nonce_start = salt[8:]
    with open(source, "rb") as plain, open(target, "wb") as sealed:
        sealed.write(header)
        for number, (chunk, final) in enumerate(_padded_chunks(plain)):
            if number >= _MAX_CHUNKS:
                raise ValueError(f"{source}: too large to seal (over 2**32 chunks)")
            count = number.to_bytes(4, "big")
            sealed.write(cipher.encrypt(nonce_start + count, chunk, header + count + final))


def open_blob_file(source: str, target: str, cipher_of: Callable[[int, bytes], Any],
                   database_id: bytes | None, oid: bytes, tid: bytes) -> bytes:
    """Open the sealed file ``source`` (the blob revision ``tid`` of ``oid``) into the new
    file ``target``; ``cipher_of(key_id, salt)`` gives the subkey's AES-GCM. Returns the
    database id the file names (checked against ``database_id`` when that is given).
    Raises :class:`TamperedRecordError` (``target`` removed) when the file is not whole
    and authentic."""
    try:
        with open(source, "rb") as sealed, open(target, "wb") as plain:
            database = _open_into(sealed, plain, cipher_of, database_id, oid, tid)
    except BaseException:
        try:
            os.remove(target)
        except FileNotFoundError:
            pass
        raise
    return database


def _open_into(sealed: BinaryIO, plain: BinaryIO, cipher_of: Callable[[int, bytes], Any],
               database_id: bytes | None, oid: bytes, tid: bytes) -> bytes:
    header = _read_full(sealed, _HEADER.size)
    if len(header) < _HEADER.size or header[:2] != MAGIC:
        raise _refused(oid, tid, "is not a sealed blob file (no seal header): stored in "
                       "the clear, or cut short")
    magic, version, kind, key_id, database, sealed_oid, sealed_tid, salt = \
        _HEADER.unpack(header)
    if version not in _FORMATS or kind != BLOB:
        raise _refused(oid, tid, f"is a sealed {kind!r} of format {version}, not a blob "
                       f"file of format {' or '.join(map(str, _FORMATS))}")
    if sealed_oid != oid:
        raise _refused(oid, tid, f"was sealed for oid {oid_repr(sealed_oid)}: blob files "
                       "swapped between objects")
    if sealed_tid != tid:
        raise _refused(oid, tid, f"was sealed as the revision {tid_repr(sealed_tid)}: "
                       "another revision's file served in its place")
    if database_id is not None and database != database_id:
        raise _refused(oid, tid, f"belongs to another database ({database.hex()}, not "
                       f"{database_id.hex()})")
    try:
        cipher = cipher_of(key_id, salt)
    except KeyringError as exc:
        raise _refused(oid, tid, f"names key {key_id}, which the keyring does not hold: "
                       f"{exc}") from None
    nonce_start, step = salt[8:], CHUNK + _TAG
    chunk = _read_full(sealed, step)
    number = 0
    mark = None  # where the last byte other than zero is, and what it is
    while True:
        following = _read_full(sealed, step) if len(chunk) == step else b""
        final = _NOT_FINAL if following else _FINAL
        count = number.to_bytes(4, "big")
        try:
            opened = cipher.decrypt(nonce_start + count, chunk, header + count + final)
        except InvalidTag:
            if final == _FINAL:
                raise _refused(oid, tid, f"chunk {number} failed authentication as the last "
                               "chunk: the file was cut short (truncated), or its chunks "
                               "changed, reordered or swapped") from None
            raise _refused(oid, tid, f"chunk {number} failed authentication: changed, "
                           "reordered or swapped") from None
        if version > 1:
            kept = len(opened.rstrip(b"\0"))
            if kept:
                mark = (plain.tell() + kept - 1, opened[kept - 1])
        plain.write(opened)
        if final == _FINAL:
            break
        chunk, number = following, number + 1
    if version > 1:  # padded: cut at the mark
        if mark is None or mark[1] != MARK[0]:
            raise _refused(oid, tid, f"is authentic but not padded as format {version} "
                           "pads (no 0x80 then zeros at its end)")
        plain.truncate(mark[0])
    return database


def _refused(oid: bytes, tid: bytes, reason: str) -> TamperedRecordError:
    return TamperedRecordError(f"the blob file of oid {oid_repr(oid)} at {tid_repr(tid)} "
                               f"{reason}")
