"""The client's blob cache: committed blob files fetched from the server, in a directory
of the client's (``blob_cache_dir``; by default a temporary one removed when the client
closes), kept up to ``blob_cache_size`` bytes::

    <directory>/
        <oid hex>-<tid hex>.blob    the committed file of a revision (read-only)
        tmp/                        files being fetched, and the client's uncommitted
                                    blob files (``temporaryDirectory()``)

A file is fetched into ``tmp/`` and renamed in place whole, so a reader never sees part
of one, and several clients may share a directory. Beyond the size, the files used
longest ago (their modification time is set at each use) are removed, never the one just
fetched; a file already open stays readable after its removal (POSIX).
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading

__all__ = ["BlobCache"]

_SUFFIX = ".blob"
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


class BlobCache:
    """Committed blob files kept by a client (see the module docstring)."""

    def __init__(self, directory: str | None, size: int):
        if directory is None:
            self.directory = tempfile.mkdtemp(prefix="amphora-blob-cache-")
            self.owned = True  # removed at close
        else:
            self.directory = os.path.abspath(directory)
            self.owned = False
        self.size = int(size)
        self.temporary = os.path.join(self.directory, "tmp")
        os.makedirs(self.temporary, exist_ok=True)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes of the cached files, counted at first need

    def path(self, oid: bytes, tid: bytes) -> str:
        return os.path.join(self.directory, f"{oid.hex()}-{tid.hex()}{_SUFFIX}")

    def hit(self, oid: bytes, tid: bytes) -> str | None:
        """The cached file of revision ``tid`` of ``oid``, marked as just used, or None."""
        path = self.path(oid, tid)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def new_file(self) -> tuple[int, str]:
        """A file to fetch into: ``(descriptor, path)`` in ``tmp/``."""
        return tempfile.mkstemp(dir=self.temporary, prefix="fetch-")

    def add(self, oid: bytes, tid: bytes, source: str) -> str:
        """Take the complete file ``source`` (in ``tmp/``) as revision ``tid`` of
        ``oid``; returns its path in the cache. Evicts beyond the size."""
        path = self.path(oid, tid)
        os.chmod(source, _READ_ONLY)
        size = os.path.getsize(source)
        os.replace(source, path)
        with self._lock:
            if self._used is not None:
                self._used += size
        self.evict(keep=path)
        return path

    def evict(self, keep: str | None = None) -> int:
        """Remove the files used longest ago until the cache is within its size (never
        ``keep``); returns how many were removed."""
        with self._lock:
            if self._used is not None and self._used <= self.size:
                return 0
            files = []
            for entry in os.scandir(self.directory):
                if entry.name.endswith(_SUFFIX) and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    files.append((info.st_mtime, info.st_size, entry.path))
            used = sum(size for _, size, _ in files)
            removed = 0
            files.sort()
            for _, size, path in files:
                if used <= self.size:
                    break
                if path == keep:
                    continue
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                used -= size
                removed += 1
            self._used = used
            return removed

    def forget(self, oid: bytes, tid: bytes) -> None:
        try:
            os.remove(self.path(oid, tid))
        except FileNotFoundError:
            pass
        with self._lock:
            self._used = None

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)
