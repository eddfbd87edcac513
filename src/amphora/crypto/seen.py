"""The highest transaction a client has seen of each encrypted database, kept in a file.

A storage server cannot forge a sealed record, but it can serve an older copy of the whole
database: every record in it is authentic. What catches that is the client's memory: the
file remembers, for each database id, the newest tid this client was shown, and
:class:`~amphora.storage.encrypted.EncryptedStorage` refuses a storage whose last
transaction is older (:class:`~amphora.errors.RollbackError`).

The file is JSON, one entry per database: ``{"<database id, hex>": "<tid, hex>"}``. By
default it lies beside the keyring (``app.keyring.seen``). Several processes may share it:
each write takes an exclusive lock on ``<file>.lock``, reads the file again, keeps the
larger tid of each database, writes a new file beside it and renames it over the old one,
so that a writer never lowers another's entry and a crash leaves the old file or the new.

Writing is not done at every commit. :meth:`SeenTids.note` remembers a tid in memory; a
timer writes it at most ``delay`` seconds later (one write for however many tids came
meanwhile), and :meth:`SeenTids.close` writes what is left. The guarantee: a tid noted is
in the file ``delay`` seconds later (one second by default), or at close, whichever comes
first; only a process that dies within that time can forget it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from amphora.errors import StorageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = ["SeenTids", "seen_file_of"]

DELAY = 1.0  # seconds between a tid seen and the file holding it, at most


def seen_file_of(keyring_path: str | os.PathLike) -> Path:
    """Where the tids seen are kept by default: beside the keyring."""
    path = Path(keyring_path)
    return path.with_name(path.name + ".seen")


class SeenTids:
    """The file ``path`` of the newest tids seen, by database id (16 bytes)."""

    def __init__(self, path: str | os.PathLike, delay: float = DELAY):
        self.path = Path(path).absolute()  # the same file after a change of directory
        self.delay = delay
        self._lock = threading.Lock()  # guards what follows
        self._pending: dict[bytes, bytes] = {}  # noted, not yet written
        self._timer: threading.Timer | None = None
        self._written_at = 0.0
        self._closed = False
        self._writing = threading.Lock()  # one write at a time: close waits for the timer's

    def __repr__(self) -> str:
        return f"<SeenTids {str(self.path)!r}>"

    def remembered(self, database_id: bytes) -> bytes | None:
        """The newest tid remembered of ``database_id`` (what this process noted included),
        or None if the file has none."""
        with self._lock:
            pending = self._pending.get(database_id)
        found = self.entries().get(database_id)
        if pending is None or (found is not None and found > pending):
            return found
        return pending

    def entries(self) -> dict[bytes, bytes]:
        """What the file holds: ``{database id: tid}`` (StorageError if it is damaged)."""
        return _read(self.path)

    def note(self, database_id: bytes, tid: bytes) -> None:
        """Remember that ``tid`` of ``database_id`` was seen: written within ``delay``."""
        with self._lock:
            if tid <= self._pending.get(database_id, b""):
                return
            self._pending[database_id] = tid
            if self._closed:
                return  # written by nobody: the storage was closed
            if self._timer is None or not self._timer.is_alive():  # (none after a fork)
                wait = max(0.0, self._written_at + self.delay - time.monotonic())
                self._timer = threading.Timer(wait, self._timed_write)
                self._timer.daemon = True
                self._timer.name = f"amphora-seen {self.path.name}"
                self._timer.start()

    def flush(self) -> None:
        """Write now what was noted (after the timer's write, if one is under way)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._write_pending()

    def close(self) -> None:
        """Write what was noted; nothing is written after this."""
        with self._lock:
            self._closed = True
        self.flush()

    def _timed_write(self) -> None:
        with self._lock:
            if self._timer is threading.current_thread():
                self._timer = None
        try:
            self._write_pending()
        except Exception:  # noqa: BLE001 - kept pending: flush and close raise it
            pass

    def _write_pending(self) -> None:
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
                self._written_at = time.monotonic()
            if not pending:
                return
            try:
                self.merge(pending)
            except BaseException:
                with self._lock:  # not lost: the next write (or close) tries again
                    for database_id, tid in pending.items():
                        if tid > self._pending.get(database_id, b""):
                            self._pending[database_id] = tid
                raise

    def merge(self, tids: dict[bytes, bytes]) -> None:
        """Raise the file's entries to ``tids`` (never lower one), under the file lock."""
        with _locked(self.path.with_name(self.path.name + ".lock")):
            entries = _read(self.path)
            if all(entries.get(database_id, b"") >= tid for database_id, tid in tids.items()):
                return
            for database_id, tid in tids.items():
                if tid > entries.get(database_id, b""):
                    entries[database_id] = tid
            _write(self.path, entries)


def _read(path: Path) -> dict[bytes, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read the file of transactions seen {path}: {exc}") from None
    try:
        document = json.loads(text)
        entries = {bytes.fromhex(key): bytes.fromhex(value) for key, value in document.items()}
        if any(len(key) != 16 or len(value) != 8 for key, value in entries.items()):
            raise ValueError("a database id is 16 bytes and a tid 8")
    except (ValueError, TypeError, AttributeError) as exc:
        raise StorageError(f"{path} is not a file of transactions seen ({exc}): remove it to "
                           "start again (a rollback before then is not caught)") from None
    return entries


def _write(path: Path, entries: dict[bytes, bytes]) -> None:
    text = json.dumps({key.hex(): value.hex() for key, value in sorted(entries.items())},
                      indent=1) + "\n"
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, held on the file ``path`` (made if missing)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
