"""Helpers shared by the parts of the SQLite storage (:mod:`amphora.storage.sqlite`,
:mod:`amphora.storage._sqlite_schema`, :mod:`amphora.storage._sqlite_pack`).

Private: nothing here is part of amphora's API.
"""
from __future__ import annotations

import struct

# Statements both the storage and pack run (the schema: see SQLiteStorage).
# -- reading --------------------------------------------------------------------------------
_LOAD_CURRENT = "SELECT tid, data FROM objects WHERE oid = ?"
_LOAD_SERIAL = ("SELECT data FROM objects WHERE oid = ?1 AND tid = ?2"
                " UNION ALL SELECT data FROM revisions WHERE oid = ?1 AND tid = ?2"
                " UNION ALL SELECT data FROM replaced WHERE oid = ?1 AND tid = ?2 LIMIT 1")
_LAST_TID = "SELECT max(tid) FROM transactions"
_CHANGES_SINCE = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid"

# -- writing --------------------------------------------------------------------------------
_PRUNE_REPLACED = "DELETE FROM replaced WHERE end_tid < ?"

# Oids and tids are stored as signed 64-bit integers holding the same 8 bytes, so any
# 8-byte oid round-trips (tids, below 2**63, keep their order).
_int64 = struct.Struct(">q")
_unpack = _int64.unpack
_pack = _int64.pack


def _u(value: bytes) -> int:
    return _unpack(value)[0]


def _ints(packed: bytes) -> list[int]:
    """The integers of 8-byte oids or tids joined into one string."""
    return [value for (value,) in _int64.iter_unpack(packed)]


def _split(oids: bytes) -> list[bytes]:
    return [oids[i:i + 8] for i in range(0, len(oids), 8)]
