"""The embedded default storage: one SQLite file (see :mod:`.storage`).

The storage class is put together from parts, one module each: :mod:`.storage` (records,
commits, reads, invalidations), :mod:`.schema` (creating and checking the file),
:mod:`.mirror` (the JSON mirror for SQL search), :mod:`.pack` (packing, checkpoints,
vacuum) and :mod:`.statements` (the SQL those parts share).
"""
from amphora.storage.sqlite.storage import SCHEMA_VERSION, SQLiteStorage

__all__ = ["SQLiteStorage", "SCHEMA_VERSION"]
