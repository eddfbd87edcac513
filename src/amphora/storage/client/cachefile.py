"""The client's record cache kept in a file across restarts (``cache_file=PATH``).

A client storage given a cache file writes its record cache there when it closes, with
the last transaction it had heard of (the tid the records are valid for), and reads it
back when it opens: it names that tid in its handshake, and keeps the records only if
the server can enumerate every transaction committed since (the cached records those
wrote are then closed, as pushes would have closed them); if it cannot (the database was
packed past that tid, is another database, or changed too much) the records are
dropped. This is how ZEO verifies its persistent cache.

Format (version 1), big-endian::

    b"amphora-record-cache 1\\n"  the magic line
    tid (8 bytes)                the last transaction the records are valid for
    then per record: oid (8), start (8), end (8; all zero: current), length (4), data

The file is replaced atomically (written aside, then renamed). A file that cannot be
read (missing, truncated, not this format) is logged and ignored: the cache starts
empty. The records are written as the server holds them (sealed ones stay sealed:
with an encryption layer over the client, the file holds no plaintext).
"""
from __future__ import annotations

import logging
import os
import struct
from typing import Iterable

log = logging.getLogger("amphora.client")

__all__ = ["read_cache_file", "write_cache_file"]

_MAGIC = b"amphora-record-cache 1\n"
_HEAD = struct.Struct(">8s8s8sI")  # oid, start, end, length of the data that follows
_CURRENT = b"\0" * 8  # the end of a record no commit has replaced

Record = tuple[bytes, bytes, bytes, "bytes | None"]  # oid, data, start, end


def read_cache_file(path: str) -> tuple[bytes, list[Record]] | None:
    """``(tid, records)`` of the cache file at ``path``; None if there is none or it
    cannot be read (logged)."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("record cache file %s cannot be read, starting empty: %s", path, exc)
        return None
    if not content.startswith(_MAGIC) or len(content) < len(_MAGIC) + 8:
        log.warning("record cache file %s is not an amphora record cache, ignored", path)
        return None
    offset = len(_MAGIC)
    tid = content[offset:offset + 8]
    offset += 8
    records: list[Record] = []
    size = _HEAD.size
    while offset < len(content):
        if offset + size > len(content):
            log.warning("record cache file %s is truncated, ignored", path)
            return None
        oid, start, end, length = _HEAD.unpack_from(content, offset)
        offset += size
        data = content[offset:offset + length]
        if len(data) != length:
            log.warning("record cache file %s is truncated, ignored", path)
            return None
        offset += length
        records.append((oid, data, start, None if end == _CURRENT else end))
    return tid, records


def write_cache_file(path: str, tid: bytes, records: Iterable[Record]) -> None:
    """Write ``records`` (valid as of transaction ``tid``) to ``path``, atomically; a
    failure is logged (the next start finds the previous file, or none)."""
    aside = f"{path}.{os.getpid()}.tmp"
    try:
        with open(aside, "wb") as file:
            file.write(_MAGIC + tid)
            pack = _HEAD.pack
            for oid, data, start, end in records:
                file.write(pack(oid, start, end or _CURRENT, len(data)))
                file.write(data)
        os.replace(aside, path)
    except OSError as exc:
        log.warning("record cache file %s cannot be written: %s", path, exc)
        try:
            os.unlink(aside)
        except OSError:
            pass
