"""Helpers shared by the parts of the SQLite storage (:mod:`amphora.storage.sqlite`,
:mod:`amphora.storage.sqlite.schema`, :mod:`amphora.storage.sqlite.pack`).

Private: nothing here is part of amphora's API.
"""
from __future__ import annotations


# Statements both the storage and pack run (the schema: see SQLiteStorage).
# -- reading --------------------------------------------------------------------------------
_LOAD_CURRENT = "SELECT tid, data FROM objects WHERE oid = ?"
_LOAD_SERIAL = ("SELECT data FROM objects WHERE oid = :oid AND tid = :tid"
                " UNION ALL SELECT data FROM revisions WHERE oid = :oid AND tid = :tid"
                " UNION ALL SELECT data FROM replaced WHERE oid = :oid AND tid = :tid LIMIT 1")
_LAST_TID = "SELECT max(tid) FROM transactions"
_CHANGES_SINCE = "SELECT tid, oids FROM transactions WHERE tid > ? ORDER BY tid"

# -- writing --------------------------------------------------------------------------------
_PRUNE_REPLACED = "DELETE FROM replaced WHERE end_tid < ?"
_ROWS_PER_STATEMENT = (256, 64, 16, 4, 1)  # statements that write many rows of objects at once

