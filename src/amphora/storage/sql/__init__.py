"""What the SQL storages share: the oid and tid keys as signed 64-bit integers
(:mod:`~amphora.storage.sql.keys`), the transaction log read as records
(:mod:`~amphora.storage.sql.log`) and the JSON mirror's common part, its modes and the
placeholders of queries written for amphora (:mod:`~amphora.storage.sql.mirror`).

The backends themselves are the packages :mod:`amphora.storage.sqlite` and
:mod:`amphora.storage.postgresql`.
"""
