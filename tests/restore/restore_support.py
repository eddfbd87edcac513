"""What the restore tests share: a FileStorage written by ZODB itself, more commits to it,
and a storage's history as comparable values."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import transaction
from persistent.mapping import PersistentMapping

from conformance.models import Item


def write_filestorage(path: Path, commits: int = 3, start: int = 0) -> None:
    """Commit ``commits`` transactions to the FileStorage at ``path`` through ``ZODB.DB``
    (created when missing): each with a user, a description and an extension, adding an
    :class:`Item` and changing the ones before, so that objects have several revisions."""
    def change(root: Any, number: int) -> None:
        people = root.setdefault("people", PersistentMapping())
        for item in people.values():
            item.age += 1
        people[f"p{number}"] = Item(f"p{number}", email=f"p{number}@example.com",
                                    age=20 + number)
    _commit(path, None, range(start, start + commits), "commit", change)


def _commit(path: Path, blob_dir: Path | None, numbers: range, note: str,
            change: Any) -> None:
    """A transaction for each of ``numbers`` to the FileStorage at ``path`` (with the blob
    directory ``blob_dir``), with a user, ``note`` and the number as description and an
    extension, making ``change(root, number)``."""
    import ZODB
    from ZODB.FileStorage import FileStorage
    db = ZODB.DB(FileStorage(str(path), blob_dir=None if blob_dir is None else str(blob_dir)))
    try:
        manager = transaction.TransactionManager()
        for number in numbers:
            txn = manager.begin()
            txn.user = f"user {number}"
            txn.note(f"{note} {number}")
            txn.setExtendedInfo("number", number)
            conn = db.open(manager)
            change(conn.root(), number)
            manager.commit()
            conn.close()
    finally:
        db.close()


def dump(storage: Any) -> list[tuple]:
    """Every transaction of ``storage``: tid, user, description, extension and its
    records ``(oid, data)`` sorted by oid."""
    return [(txn.tid, txn.user, txn.description, dict(txn.extension),
             sorted((record.oid, record.data) for record in txn))
            for txn in storage.iterator()]


def current_only(history: list[tuple]) -> list[tuple]:
    """:func:`dump` ``history`` as a history-free storage keeps it: each transaction with
    only the records that are still current."""
    newest = {oid: tid for tid, _, _, _, records in history for oid, _ in records}
    return [(tid, user, description, extension,
             [(oid, data) for oid, data in records if newest[oid] == tid])
            for tid, user, description, extension, records in history]


def dump_file(path: Path) -> list[tuple]:
    """:func:`dump` of the FileStorage at ``path``, opened read-only."""
    from ZODB.FileStorage import FileStorage
    return _dump_closed(FileStorage(str(path), read_only=True))


def dump_uri(uri: str) -> list[tuple]:
    """:func:`dump` of the storage ``uri`` names, opened read-only."""
    import amphora
    return _dump_closed(amphora.open_storage(uri, read_only=True))


def _dump_closed(storage: Any, dumper: Any = None) -> list[tuple]:
    try:
        return (dumper or dump)(storage)
    finally:
        storage.close()


def write_blob_filestorage(path: Path, blob_dir: Path, commits: int = 2, start: int = 0) -> None:
    """Commit ``commits`` transactions with blobs to the FileStorage at ``path`` with its
    blob directory ``blob_dir``, through ``ZODB.DB``: each adds blobs of 0, 1 and 100,000
    bytes and rewrites the first blob of the commit before."""
    from ZODB.blob import Blob

    def change(root: Any, number: int) -> None:
        blobs = root.setdefault("blobs", PersistentMapping())
        if number - 1 in blobs:
            with blobs[number - 1][0].open("w") as file:
                file.write(b"rewritten by commit %d" % number)
        blobs[number] = [Blob(b""), Blob(b"%d" % (number % 10)),
                         Blob(bytes(range(256)) * 390 + b"%d" % number)]
    _commit(path, blob_dir, range(start, start + commits), "blobs", change)


def dump_with_blobs(storage: Any) -> list[tuple]:
    """:func:`dump` of ``storage`` with each blob record's file read: records are
    ``(oid, data, blob bytes or None)``."""
    from amphora.storage.blobs import is_blob_record

    def blob_of(oid: bytes, tid: bytes, data: bytes | None) -> bytes | None:
        if not is_blob_record(data):
            return None
        with open(storage.loadBlob(oid, tid), "rb") as file:
            return file.read()
    return [(txn.tid, txn.user, txn.description, dict(txn.extension),
             sorted((record.oid, record.data, blob_of(record.oid, txn.tid, record.data))
                    for record in txn))
            for txn in storage.iterator()]


def blob_count(history: list[tuple]) -> int:
    """How many blob revisions a :func:`dump_with_blobs` holds."""
    return sum(blob is not None for *_, records in history for _, _, blob in records)


def dump_file_with_blobs(path: Path, blob_dir: Path) -> list[tuple]:
    """:func:`dump_with_blobs` of the FileStorage at ``path``, opened read-only."""
    from ZODB.FileStorage import FileStorage
    return _dump_closed(FileStorage(str(path), read_only=True, blob_dir=str(blob_dir)),
                        dump_with_blobs)


def dump_uri_with_blobs(uri: str) -> list[tuple]:
    """:func:`dump_with_blobs` of the storage ``uri`` names, opened read-only."""
    import amphora
    return _dump_closed(amphora.open_storage(uri, read_only=True), dump_with_blobs)
