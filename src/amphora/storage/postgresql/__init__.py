"""The PostgreSQL storage, for many processes and machines (see :mod:`.storage`).

The storage class is put together from parts, one module each: :mod:`.storage` (records,
commits, reads, invalidations by ``LISTEN``/``NOTIFY``), :mod:`.schema` (creating and
checking the tables), :mod:`.mirror` (the JSON mirror for SQL search) and :mod:`.pack`
(packing, with the garbage collection done in SQL).
"""
from amphora.errors import PostgreSQLConnectionError
from amphora.storage.postgresql.storage import SCHEMA_VERSION, PostgreSQLStorage, require_psycopg

__all__ = ["PostgreSQLStorage", "PostgreSQLConnectionError", "SCHEMA_VERSION", "require_psycopg"]
