"""Oids and tids as the SQL storages keep them. Private.

They are stored as signed 64-bit integers holding the same 8 bytes, so any 8-byte oid
round-trips (tids, below 2**63, keep their order).
"""
from __future__ import annotations

import struct

__all__ = ["_int64", "_pack", "_unpack", "_u", "_ints", "_split"]

_int64 = struct.Struct(">q")
_unpack = _int64.unpack
_pack = _int64.pack


def _u(value: bytes) -> int:
    return _unpack(value)[0]


def _ints(packed: bytes) -> list[int]:
    """The integers of 8-byte oids or tids joined into one string."""
    return [value for (value,) in _int64.iter_unpack(packed)]


def _split(oids: bytes) -> list[bytes]:
    """8-byte oids joined into one string, apart again."""
    return [oids[i:i + 8] for i in range(0, len(oids), 8)]
