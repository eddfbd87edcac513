"""Blobs: large binary values kept as files beside a storage's records (ZODB's
``IBlobStorage``).

A blob is a persistent object (``ZODB.blob.Blob``, re-exported as ``amphora.Blob``)
whose record says only "a blob" and whose bytes live in a file, one per revision, so
that a value of any size is streamed from and to disk and never held in memory. The
storage keeps those files in a *blob directory*::

    <blob directory>/
        .amphora-blobs          marks the directory as an amphora blob directory
        tmp/                    uncommitted files (``temporaryDirectory()``): blobs being
                                written, savepoints, files staged by a commit
        pending/<tid>           a commit's journal: the oids whose files it placed
        <oid>/<tid>.blob        the file of the revision ``tid`` wrote for ``oid``
                                (16 hex digits each), read-only once committed

A commit places its blob files where they belong during the vote, after the journal
naming them and before the record that refers to them is committed, and syncs each file
and directory to disk on the way: a committed blob revision always has its file. A crash
between the two leaves files whose transaction never committed; the journal names them,
and the next opening of the storage (or a pack) removes them. An aborted commit removes
its files at once.

Undo of a blob revision writes, for the new revision, a hard link to (or copy of) the
file of the revision it brings back. Pack removes the files of the revisions it removes,
and the directory of an object once it has none.

Storages get all this from :class:`BlobStorageMixin`; a storage without it has
``supports_blobs`` false, and ZODB's and amphora's connections refuse to store a blob
there with :class:`~amphora.errors.Unsupported` naming the storage.
"""
from __future__ import annotations

import errno
import os
import pickletools
import shutil
import stat
import tempfile
from typing import Any, Callable, Iterable

from amphora.errors import ObjectNotFoundError, StorageError, StorageFormatError
from amphora.utils import oid_repr, tid_repr, u64

__all__ = ["BlobDirectory", "BlobStorageMixin", "BlobFileError", "BlobLayerMixin",
           "is_blob_record", "blob_capable", "declare_blob_storage", "open_committed"]

MARKER = ".amphora-blobs"
_MARKER_TEXT = "amphora blob directory, layout 1: <oid hex>/<tid hex>.blob\n"
_BLOB_CLASS = ("ZODB.blob", "Blob")
_SUFFIX = ".blob"
# the opcodes a class pickle may hold besides the class itself (ZODB writes the class
# alone, or older versions the class and None in a tuple)
_CLASS_PICKLE_OPS = frozenset({"PROTO", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "MARK",
                               "NONE", "TUPLE", "TUPLE1", "TUPLE2", "EMPTY_TUPLE", "STOP",
                               "FRAME"})


class BlobFileError(ObjectNotFoundError):
    """A committed blob revision's file is missing or not the size it was committed with.

    ``args[0]`` is the oid; the message names the oid, the tid and the file.
    """

    def __init__(self, oid: bytes, tid: bytes, path: str, problem: str):
        super().__init__(oid, tid)
        self.oid, self.tid, self.path = oid, tid, path
        self.problem = problem

    def __str__(self) -> str:
        return (f"the blob of oid {oid_repr(self.oid)} written by transaction "
                f"{tid_repr(self.tid)}: {self.problem} ({self.path})")


def is_blob_record(record: bytes | None) -> bool:
    """Whether ``record`` is a blob's (its class pickle names ``ZODB.blob.Blob``), read
    from the pickle's opcodes: nothing is imported or unpickled."""
    if not record or b"ZODB.blob" not in record[:80]:
        return False
    found = None
    try:
        for opcode, arg, _ in pickletools.genops(record):
            name = opcode.name
            if name in ("GLOBAL", "STACK_GLOBAL"):
                if found is not None or name == "STACK_GLOBAL":
                    return False
                module, _, attr = arg.partition(" ")
                found = (module, attr)
            elif name == "STOP":
                break
            elif name not in _CLASS_PICKLE_OPS:
                return False
    except Exception:
        return False
    return found == _BLOB_CLASS


def blob_capable(storage: Any) -> bool:
    """Whether ``storage`` keeps blobs: amphora's ``supports_blobs`` flag, or for ZODB's
    storages (a FileStorage has ``loadBlob`` with or without a blob directory) whether
    it provides ZODB's ``IBlobStorage``."""
    flag = getattr(storage, "supports_blobs", None)
    if flag is not None:
        return bool(flag)
    try:
        from ZODB.interfaces import IBlobStorage
    except ImportError:
        return callable(getattr(storage, "loadBlob", None))
    return IBlobStorage.providedBy(storage)


def _hex(key: bytes) -> str:
    return key.hex()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move(source: str, target: str) -> None:
    """Rename ``source`` to ``target``, or copy and remove it across file systems."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(source, target)
        os.remove(source)


def _take_into(directory: str, filename: str, prefix: str) -> str:
    """Move ``filename`` to a new name in ``directory`` (copy and remove it across file
    systems); returns the new name."""
    fd, taken = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.close(fd)
    try:
        _move(filename, taken)
    except BaseException:
        os.remove(taken)
        raise
    return taken


class BlobDirectory:
    """The files of one blob directory (see the module docstring for the layout)."""

    def __init__(self, path: str, read_only: bool = False):
        """Check (and, unless ``read_only``, make) the directory ``path``.

        Raises :class:`~amphora.errors.StorageFormatError` when ``path`` is not a
        directory, or is a non-empty directory without the marker file (another
        program's: a ZODB blob directory, say), or is not writable.
        """
        self.path = os.path.abspath(path)
        self.temporary = os.path.join(self.path, "tmp")
        self.pending = os.path.join(self.path, "pending")
        marker = os.path.join(self.path, MARKER)
        if not os.path.isdir(self.path):
            if os.path.exists(self.path):
                raise StorageFormatError(f"{self.path}: the blob directory is not a directory")
            if read_only:
                return  # a database without blobs yet: every blob file is missing
            os.makedirs(self.path, exist_ok=True)
        if not os.path.exists(marker):
            if any(name not in ("tmp", "pending") for name in os.listdir(self.path)):
                raise StorageFormatError(
                    f"{self.path}: not an amphora blob directory (no {MARKER} file, and "
                    "it is not empty)")
            if not read_only:
                with open(marker, "w") as file:
                    file.write(_MARKER_TEXT)
        if not read_only:
            for sub in (self.temporary, self.pending):
                os.makedirs(sub, exist_ok=True)
            if not os.access(self.path, os.W_OK):
                raise StorageFormatError(f"{self.path}: the blob directory is not writable")

    # -- names ----------------------------------------------------------------------
    def oid_directory(self, oid: bytes) -> str:
        return os.path.join(self.path, _hex(oid))

    def file_of(self, oid: bytes, tid: bytes) -> str:
        """Where the file of revision ``tid`` of ``oid`` is (whether or not it exists)."""
        return os.path.join(self.path, _hex(oid), _hex(tid) + _SUFFIX)

    getBlobFilename = file_of  # the name ZODB's blob tests ask a storage's fshelper for

    def revisions(self) -> Iterable[tuple[bytes, list[bytes]]]:
        """``(oid, [tid, ...])`` for every object with blob files."""
        if not os.path.isdir(self.path):
            return
        for name in os.listdir(self.path):
            if len(name) != 16:
                continue
            try:
                oid = bytes.fromhex(name)
            except ValueError:
                continue
            yield oid, self.tids_of(oid)

    def tids_of(self, oid: bytes) -> list[bytes]:
        """The tids of the revisions of ``oid`` that have a file."""
        directory = self.oid_directory(oid)
        tids = []
        for file in os.listdir(directory) if os.path.isdir(directory) else ():
            if file.endswith(_SUFFIX) and len(file) == 16 + len(_SUFFIX):
                try:
                    tids.append(bytes.fromhex(file[:16]))
                except ValueError:
                    pass
        return tids

    # -- a commit's files -------------------------------------------------------------
    def stage(self, filename: str) -> str:
        """Take ``filename`` (moved, or copied and removed from another file system) into
        the temporary directory; returns its new name."""
        return _take_into(self.temporary, filename, "staged-")

    def stage_link(self, oid: bytes, tid: bytes) -> str:
        """A staged copy (a hard link when possible) of the committed file of ``tid``."""
        source = self.file_of(oid, tid)
        staged = os.path.join(self.temporary,
                              f"linked-{_hex(oid)}-{_hex(tid)}-{os.urandom(4).hex()}")
        try:
            os.link(source, staged)
        except FileNotFoundError:
            raise BlobFileError(oid, tid, source, "the file is missing") from None
        except OSError:
            shutil.copyfile(source, staged)
        return staged

    def place(self, tid: bytes, staged: dict[bytes, str], durable: bool
              ) -> tuple[list[str], dict[bytes, int]]:
        """Move the ``staged`` files (by oid) where revision ``tid`` keeps them, read-only,
        after writing the journal naming them; with ``durable``, each file and directory
        is synced to disk first. Returns the files placed and their sizes by oid."""
        journal = os.path.join(self.pending, _hex(tid))
        with open(journal, "w") as file:
            file.write("".join(_hex(oid) + "\n" for oid in staged))
            if durable:
                file.flush()
                os.fsync(file.fileno())
        if durable:
            _fsync_dir(self.pending)
        readable = os.stat(self.path).st_mode & (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        placed, sizes = [], {}
        new_directories = False
        for oid, source in staged.items():
            directory = self.oid_directory(oid)
            if not os.path.isdir(directory):
                os.makedirs(directory, exist_ok=True)
                new_directories = True
            target = self.file_of(oid, tid)
            os.chmod(source, readable)
            if durable:
                fd = os.open(source, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            sizes[oid] = os.path.getsize(source)
            os.replace(source, target)
            placed.append(target)
            if durable:
                _fsync_dir(directory)
        if durable and new_directories:
            _fsync_dir(self.path)
        return placed, sizes

    def settle(self, tid: bytes) -> None:
        """The commit of ``tid`` is durable: forget its journal."""
        try:
            os.remove(os.path.join(self.pending, _hex(tid)))
        except FileNotFoundError:
            pass

    def discard(self, tid: bytes | None, files: Iterable[str]) -> None:
        """Remove ``files`` (staged or placed by a commit that did not happen), and the
        journal of ``tid``."""
        for path in files:
            self.remove_file(path)
        if tid is not None:
            self.settle(tid)

    def recover(self, committed: Callable[[bytes], bool]) -> int:
        """Remove the files of journaled commits that ``committed(tid)`` says never
        committed (a crash between placing and committing); returns how many."""
        removed = 0
        if not os.path.isdir(self.pending):
            return 0
        for name in os.listdir(self.pending):
            journal = os.path.join(self.pending, name)
            try:
                tid = bytes.fromhex(name)
            except ValueError:
                continue
            if len(tid) != 8:
                continue
            if not committed(tid):
                with open(journal) as file:
                    oids = [bytes.fromhex(line.strip()) for line in file if line.strip()]
                for oid in oids:
                    removed += self.remove_file(self.file_of(oid, tid))
            os.remove(journal)
        return removed

    def remove_file(self, path: str) -> int:
        """Remove ``path`` and its object's directory if that is left empty; 1 if a file
        was removed."""
        try:
            os.remove(path)
        except FileNotFoundError:
            return 0
        directory = os.path.dirname(path)
        if directory != self.temporary:
            try:
                os.rmdir(directory)
            except OSError:
                pass  # other revisions remain
        return 1

    def remove_unreferenced(self, kept: Callable[[bytes], set[bytes]], last: bytes) -> int:
        """Remove the files of revisions not in ``kept(oid)`` (the tids that have a
        record), leaving those above ``last`` (commits in progress); returns how many."""
        removed = 0
        for oid, tids in list(self.revisions()):
            keep = kept(oid)
            for tid in tids:
                if tid not in keep and u64(tid) <= u64(last):
                    removed += self.remove_file(self.file_of(oid, tid))
        return removed


class BlobStorageMixin:
    """ZODB's ``IBlobStorage`` for a storage built on
    :class:`~amphora.storage.base.StorageBase`: ``storeBlob``, ``restoreBlob``,
    ``loadBlob``, ``openCommittedBlobFile``, ``temporaryDirectory``.

    The storage calls ``_open_blobs(directory)`` when it opens, ``_place_blobs(tid)``
    in its vote once the tid is known (before anything that refers to the files is
    durable; it returns the files' sizes, which the storage commits with the records),
    ``_settle_blobs()`` when the commit is durable, ``_discard_blobs()`` in its abort
    and ``_pack_blobs(kept, last)`` at the end of a pack; it provides
    ``_blobs_durable`` (whether to sync files to disk) and ``_blob_size(oid, tid)`` (the
    size a revision's file was committed with, None if not known).
    """

    supports_blobs = True  #: ``storeBlob``/``loadBlob``: see amphora.storage.blobs
    _blobs_durable = True
    _blob_directory: BlobDirectory | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._staged_blobs: dict[bytes, str] = {}  # oid -> its file, in the temporary directory
        self._placed_blobs: tuple[bytes, list[str]] | None = None  # (tid, files) voted

    def _open_blobs(self, directory: str, read_only: bool = False) -> BlobDirectory:
        self._blob_directory = BlobDirectory(directory, read_only=read_only)
        return self._blob_directory

    @property
    def blob_directory(self) -> str:
        """The directory of this storage's blob files."""
        return self._blobs().path

    @property
    def fshelper(self) -> BlobDirectory:
        """The blob directory's files (ZODB's blob tests find file names through it)."""
        return self._blobs()

    def _blobs(self) -> BlobDirectory:
        directory = self._blob_directory
        if directory is None:
            raise StorageError(f"{self.__name__} is closed")
        return directory

    # -- IBlobStorage -----------------------------------------------------------------
    def temporaryDirectory(self) -> str:
        """Where uncommitted blob files are made (on the blob directory's file system,
        so that a commit moves them in place without copying)."""
        return self._blobs().temporary

    def storeBlob(self, oid: bytes, oldserial: bytes | None, data: bytes, blobfilename: str,
                  version: str, transaction: Any) -> None:
        """``store`` the record of a blob, and take the file ``blobfilename`` (moved away:
        the caller no longer owns it) as its revision's file."""
        if isinstance(oldserial, str):  # some of ZODB's tests pass '\0' * 8
            oldserial = oldserial.encode("latin-1")
        self.store(oid, oldserial, data, version, transaction)
        self._stage_blob(oid, self._blobs().stage(blobfilename))

    def restoreBlob(self, oid: bytes, serial: bytes, data: bytes, blobfilename: str,
                    prev_txn: bytes | None, transaction: Any) -> None:
        """``restore`` the record of a blob with the file ``blobfilename`` (moved away)."""
        self.restore(oid, serial, data, "", prev_txn, transaction)
        self._stage_blob(oid, self._blobs().stage(blobfilename))

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        """The name of the committed file of revision ``serial`` of ``oid`` (read-only:
        open it for reading only). Raises :class:`BlobFileError` (an
        :class:`~amphora.errors.ObjectNotFoundError`) when the revision is a blob's but
        its file is missing, and :class:`ObjectNotFoundError` when there is no such
        blob revision."""
        path = self._blobs().file_of(oid, serial)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = None
        if size is not None:
            committed = self._blob_size(oid, serial)
            if committed is not None and committed != size:
                raise BlobFileError(oid, serial, path, f"the file is truncated or damaged: "
                                    f"{size:,} bytes, committed with {committed:,}")
            return path
        try:
            record = self.loadSerial(oid, serial)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(oid, f"no blob revision {tid_repr(serial)} of oid "
                                           f"{oid_repr(oid)}") from None
        if is_blob_record(record):
            raise BlobFileError(oid, serial, path, "the file is missing")
        self._not_a_blob(oid)

    @staticmethod
    def _not_a_blob(oid: bytes) -> None:
        raise ObjectNotFoundError(oid, f"oid {oid_repr(oid)} is not a blob")

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        """The committed file of revision ``serial`` of ``oid``, open for reading (a
        ``ZODB.blob.BlobFile`` of ``blob`` when given)."""
        return open_committed(self.loadBlob(oid, serial), blob)

    # -- undo: an undone blob revision's file comes back -------------------------------
    def undo(self, transaction_id: Any, transaction: Any) -> Any:
        from amphora.storage.undo import undo_tid
        result = super().undo(transaction_id, transaction)
        undone = undo_tid(transaction_id)
        for oid in result[1]:
            data = self._stores.get(oid)
            if data is None or not is_blob_record(data):
                continue
            found = self.loadBefore(oid, undone)  # the revision the undo brings back
            if found is not None:
                self._stage_undone_blob(oid, found[1])
        return result

    def remove_blob_files(self, oids: Iterable[bytes]) -> int:
        """Remove every blob file of ``oids``: objects a layer above this storage deleted
        (a DemoStorage's pack), none of whose revisions is read again. Returns how many
        files went."""
        directory = self._blob_directory
        if directory is None:
            return 0
        return sum(directory.remove_file(directory.file_of(oid, tid))
                   for oid in oids for tid in directory.tids_of(oid))

    def _stage_undone_blob(self, oid: bytes, tid: bytes) -> None:
        """Stage, for the undo's new revision of ``oid``, the file of revision ``tid``."""
        self._stage_blob(oid, self._blobs().stage_link(oid, tid))

    # -- the commit's hooks -------------------------------------------------------------
    def _stage_blob(self, oid: bytes, staged: str) -> None:
        previous = self._staged_blobs.get(oid)
        self._staged_blobs[oid] = staged
        if previous is not None:
            self._blobs().remove_file(previous)

    def _blob_size(self, oid: bytes, tid: bytes) -> int | None:
        return None

    def _place_blobs(self, tid: bytes) -> dict[bytes, int]:
        staged = self._staged_blobs
        if not staged:
            return {}
        placed, sizes = self._blobs().place(tid, staged, self._blobs_durable)
        self._placed_blobs = (tid, placed)
        self._staged_blobs = {}
        return sizes

    def _settle_blobs(self) -> None:
        placed, self._placed_blobs = self._placed_blobs, None
        if placed is not None:
            self._blobs().settle(placed[0])

    def _discard_blobs(self) -> None:
        staged, self._staged_blobs = self._staged_blobs, {}
        placed, self._placed_blobs = self._placed_blobs, None
        directory = self._blob_directory
        if directory is None:
            return
        directory.discard(None, staged.values())
        if placed is not None:
            directory.discard(placed[0], placed[1])

    def _clear_writes(self) -> None:
        # Files are removed by _discard_blobs (an abort) or placed (a commit) before; here
        # only forgotten (also in a forked child, where they are the parent's).
        super()._clear_writes()
        self._staged_blobs = {}
        self._placed_blobs = None

    def _pack_blobs(self, kept: Callable[[bytes], set[bytes]], last: bytes) -> int:
        directory = self._blob_directory
        return 0 if directory is None else directory.remove_unreferenced(kept, last)


def open_committed(path: str, blob: Any = None) -> Any:
    """The committed blob file ``path``, open for reading (a ``ZODB.blob.BlobFile`` of
    ``blob`` when given): ``openCommittedBlobFile`` of every blob storage."""
    if blob is not None:
        try:
            from ZODB.blob import BlobFile
        except ImportError:  # amphora's StandaloneBlob opens its files itself
            pass
        else:
            return BlobFile(path, "r", blob)
    return open(path, "rb")


class BlobLayerMixin:
    """``IBlobStorage`` for a storage layered over others (a DemoStorage, an
    EncryptedStorage) built on :class:`~amphora.storage.base.StorageBase`: it keeps no
    blob directory of its own but hands each blob file, at its vote, to the storage it
    writes to.

    ``storeBlob`` and ``restoreBlob`` buffer the record as ``store``/``restore`` do and
    take the file (moved into :meth:`temporaryDirectory`); the vote passes each file of
    ``_blobs_stored`` (oid -> file) on (``storeBlob`` or ``restoreBlob`` of the storage
    under it, which moves it away). An abort removes the files left. The storage provides ``loadBlob`` and ``temporaryDirectory``, and says whether
    it keeps blobs (``supports_blobs``, and :func:`declare_blob_storage` for ZODB).
    """

    _blob_files: dict[bytes, str]

    def temporaryDirectory(self) -> str:
        raise NotImplementedError

    def storeBlob(self, oid: bytes, oldserial: bytes | None, data: bytes, blobfilename: str,
                  version: str, transaction: Any) -> None:
        """``store`` the record of a blob and take the file ``blobfilename`` (moved away)."""
        if isinstance(oldserial, str):  # some of ZODB's tests pass '\0' * 8
            oldserial = oldserial.encode("latin-1")
        self._refuse_blobs_unless_kept()
        self.store(oid, oldserial, data, version, transaction)
        self._take_blob_file(oid, blobfilename)

    def restoreBlob(self, oid: bytes, serial: bytes, data: bytes, blobfilename: str,
                    prev_txn: bytes | None, transaction: Any) -> None:
        """``restore`` the record of a blob with the file ``blobfilename`` (moved away)."""
        self._refuse_blobs_unless_kept()
        self.restore(oid, serial, data, "", prev_txn, transaction)
        self._take_blob_file(oid, blobfilename)

    def openCommittedBlobFile(self, oid: bytes, serial: bytes, blob: Any = None) -> Any:
        """The committed file of revision ``serial`` of ``oid``, open for reading."""
        return open_committed(self.loadBlob(oid, serial), blob)

    def loadBlob(self, oid: bytes, serial: bytes) -> str:
        raise NotImplementedError

    def _refuse_blobs_unless_kept(self) -> None:
        if not getattr(self, "supports_blobs", False):
            from amphora.errors import Unsupported
            raise Unsupported(f"{self.getName()} cannot keep a blob: "  # type: ignore[attr-defined]
                              f"{getattr(self, 'no_blobs_reason', 'it keeps no blob files')}")

    def _take_blob_file(self, oid: bytes, filename: str) -> None:
        taken = _take_into(self.temporaryDirectory(), filename, "layer-")
        files = self.__dict__.setdefault("_blob_files", {})
        previous = files.get(oid)
        files[oid] = taken
        if previous is not None:
            _remove_quietly(previous)

    @property
    def _blobs_stored(self) -> dict[bytes, str]:
        """The commit's blob files by oid (each moved away once passed on: an abort
        removes those left)."""
        return self.__dict__.get("_blob_files") or {}

    def tpc_abort(self, transaction: Any) -> None:
        files = self._blobs_stored
        try:
            super().tpc_abort(transaction)  # type: ignore[misc]
        finally:
            if files is not self._blobs_stored:  # (this commit's: it ended)
                for path in files.values():
                    _remove_quietly(path)

    def _clear_writes(self) -> None:
        # forgotten only (as in a forked child, where they are the parent's); an abort
        # removes them
        super()._clear_writes()  # type: ignore[misc]
        self._blob_files = {}


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def declare_blob_storage(storage: Any) -> None:
    """Declare that the storage object ``storage`` provides ZODB's ``IBlobStorage`` (and
    ``IBlobStorageRestoreable``): for layers, which keep blobs when the storages under
    them do, so each object says so itself."""
    try:
        from zope.interface import alsoProvides
        from ZODB.interfaces import IBlobStorage, IBlobStorageRestoreable
    except ImportError:
        return
    alsoProvides(storage, IBlobStorage, IBlobStorageRestoreable)


def _declare_zodb_interfaces() -> None:
    """ZODB's Connection stores a blob only in a storage that *provides* ZODB's
    ``IBlobStorage`` (a zope.interface check), and ZODB's copy restores blob files only
    into one that provides ``IBlobStorageRestoreable``: declared here, when ZODB is
    installed, for the storages with :class:`BlobStorageMixin`."""
    try:
        from zope.interface import classImplements
        from ZODB.interfaces import IBlobStorage, IBlobStorageRestoreable
    except ImportError:
        return
    classImplements(BlobStorageMixin, IBlobStorage, IBlobStorageRestoreable)


_declare_zodb_interfaces()
