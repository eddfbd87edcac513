"""A storage that serves an older copy of the whole database is refused: the client
remembers the newest transaction it has seen of each database (in a file beside the
keyring, by default) and raises RollbackError when a storage's last one is older."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from persistent.mapping import PersistentMapping

import amphora
from amphora.crypto.seen import SeenTids, seen_file_of
from amphora.storage.encrypted import EncryptedStorage
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import p64, tid_repr

from .conftest import PASSPHRASE


def commit(db: amphora.DB, **items: Any) -> bytes:
    """Set ``items`` in the root; the tid of that commit."""
    with db.transaction() as conn:
        for name, value in items.items():
            setattr(conn.root, name, value)
    return db.lastTransaction()


def backup(source: Path, copy: Path) -> None:
    """A copy of the SQLite database ``source`` as it is now (SQLite's online backup)."""
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    src.close(), dst.close()


def remembered(keyring: amphora.Keyring) -> dict[str, str]:
    return json.loads(seen_file_of(keyring.path).read_text())


def test_an_old_copy_of_the_database_is_refused(tmp_path, keyring):
    path, old = tmp_path / "app.db", tmp_path / "old.db"
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    commit(db, balance=100)
    database_id = db.storage.database_id
    db.close()
    backup(path, old)
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    commit(db, balance=50)
    newest = commit(db, balance=0)
    db.close()
    assert remembered(keyring) == {database_id.hex(): newest.hex()}

    # The server swaps in the old copy: every record in it is authentic, yet it is refused.
    for leftover in (tmp_path / "app.db-wal", tmp_path / "app.db-shm"):
        leftover.unlink(missing_ok=True)
    old.replace(path)
    with pytest.raises(amphora.RollbackError) as raised:
        amphora.open(f"sqlite:///{path}", keyring=keyring)
    error = raised.value
    assert error.seen == newest and error.last < newest
    message = str(error)
    for part in (tid_repr(newest), tid_repr(error.last), str(seen_file_of(keyring.path)),
                 database_id.hex(), "rollback"):
        assert part in message
    # The same refusal with the keyring unlocked again, in a new storage object.
    unlocked = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    with pytest.raises(amphora.RollbackError):
        EncryptedStorage(SQLiteStorage(str(path)), unlocked)

    # Restored from a backup on purpose: the database's entry removed, it opens.
    seen_file_of(keyring.path).write_text("{}")
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    with db.transaction() as conn:
        assert conn.root.balance == 100
    db.close()


class RewindingStorage:
    """Forwards to ``storage``; reports ``last`` as its last transaction once it is set
    (a server that withholds the commits after it)."""

    def __init__(self, storage: Any):
        self.storage = storage
        self.last: bytes | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def lastTransaction(self) -> bytes:
        return self.storage.lastTransaction() if self.last is None else self.last


def test_a_storage_whose_last_transaction_goes_back_is_refused(tmp_path, keyring):
    rewinding = RewindingStorage(SQLiteStorage(str(tmp_path / "app.db")))
    db = amphora.DB(EncryptedStorage(rewinding, keyring))
    first = commit(db, step=1)
    commit(db, step=2)
    rewinding.last = first
    # at the next transaction boundary (each connection syncs) ...
    with pytest.raises(amphora.RollbackError, match="older than"):
        with db.transaction():
            pass
    with pytest.raises(amphora.RollbackError):
        db.storage.sync()
    rewinding.last = None  # the honest answer is accepted again
    with db.transaction() as conn:
        assert conn.root.step == 2
    db.close()

    # ... and when a storage is opened on it, from the file.
    rewinding = RewindingStorage(SQLiteStorage(str(tmp_path / "app.db")))
    rewinding.last = first
    with pytest.raises(amphora.RollbackError, match=str(seen_file_of(keyring.path))):
        EncryptedStorage(rewinding, keyring)
    rewinding.storage.close()


def test_without_a_file_a_rollback_is_caught_while_open_only(tmp_path, keyring):
    rewinding = RewindingStorage(SQLiteStorage(str(tmp_path / "app.db")))
    db = amphora.DB(EncryptedStorage(rewinding, keyring, seen_file=False))
    first = commit(db, step=1)
    commit(db, step=2)
    rewinding.last = first
    with pytest.raises(amphora.RollbackError, match="this process"):
        db.storage.lastTransaction()
    rewinding.last = None
    db.close()
    assert not seen_file_of(keyring.path).exists()


def test_a_new_database_opens_and_is_remembered(tmp_path, keyring):
    seen = tmp_path / "elsewhere" / "app.seen"
    seen.parent.mkdir()
    other = amphora.open(f"sqlite:///{tmp_path / 'other.db'}", keyring=keyring, seen_file=seen)
    commit(other, name="other")
    other.close()
    before = json.loads(seen.read_text())
    db = amphora.open(f"sqlite:///{tmp_path / 'new.db'}", keyring=keyring, seen_file=seen)
    assert db.storage.database_id.hex() not in before
    tid = commit(db, name="new")
    db.close()
    entries = json.loads(seen.read_text())
    assert entries[db.storage.database_id.hex()] == tid.hex()
    assert len(entries) == 2
    assert not seen_file_of(keyring.path).exists()  # the file named replaces the default
    with pytest.raises(TypeError, match="keyring"):
        amphora.open(f"sqlite:///{tmp_path / 'plain.db'}", seen_file=seen)
    with pytest.raises(TypeError, match="seen_file"):
        EncryptedStorage(amphora.MemoryStorage(), keyring, seen_file=True)


def test_what_was_seen_is_written_without_waiting_for_close(tmp_path, keyring):
    """Commits are not each written to the file, but the newest is, soon, while the
    database stays open (a process killed later still remembers it)."""
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}", keyring=keyring)
    for step in range(20):
        tid = commit(db, step=step)
    database_id = db.storage.database_id.hex()
    deadline = time.monotonic() + 30  # generous: the file is written about a second later
    while remembered_or_none(keyring, database_id) != tid.hex() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remembered_or_none(keyring, database_id) == tid.hex()
    db.close()


def remembered_or_none(keyring: amphora.Keyring, database_id: str) -> str | None:
    try:
        return remembered(keyring).get(database_id)
    except FileNotFoundError:
        return None


WRITER = """
import sys
from amphora.crypto.seen import SeenTids
path, mine, start = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
seen = SeenTids(path)
shared = bytes(16)
for i in range(start, 400, 2):
    seen.merge({shared: i.to_bytes(8, "big"), mine: i.to_bytes(8, "big")})
"""


def test_two_processes_writing_the_file_keep_the_newest(tmp_path):
    """Two processes raise one shared entry and one each, interleaved: no write loses
    another's entry or lowers one (without the lock, a read-modify-rename would)."""
    path = tmp_path / "seen"
    ids = [bytes([1]) * 16, bytes([2]) * 16]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), ids[n].hex(), str(n)],
                                stderr=subprocess.PIPE)
               for n in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read().decode()
        writer.stderr.close()
    assert json.loads(path.read_text()) == {
        bytes(16).hex(): p64(399).hex(), ids[0].hex(): p64(398).hex(),
        ids[1].hex(): p64(399).hex()}
    # an older tid never lowers an entry
    SeenTids(path).merge({bytes(16): p64(5)})
    assert SeenTids(path).remembered(bytes(16)) == p64(399)


def test_a_file_named_relatively_stays_where_it_was_named(tmp_path, monkeypatch):
    """A relative path names the file in the directory current when it was named: a
    write after a change of directory (the timer's, or at close) goes there still."""
    (tmp_path / "here").mkdir(), (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    seen = SeenTids("app.keyring.seen")
    monkeypatch.chdir(tmp_path / "elsewhere")
    seen.merge({bytes(16): p64(7)})
    assert SeenTids(tmp_path / "here" / "app.keyring.seen").remembered(bytes(16)) == p64(7)
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("damage", ["not json", '{"00": "01"}', "[1, 2]"])
def test_a_damaged_file_is_named_when_opening(tmp_path, keyring, damage):
    path = tmp_path / "app.db"
    db = amphora.open(f"sqlite:///{path}", keyring=keyring)
    commit(db, x=PersistentMapping())
    db.close()
    seen = seen_file_of(keyring.path)
    seen.write_text(damage)
    for uri in (f"sqlite:///{path}", "memory://"):  # a database known, and an empty one
        with pytest.raises(amphora.StorageError, match=f"{seen} is not a file of transactions"):
            amphora.open(uri, keyring=keyring)
    assert seen.read_text() == damage
