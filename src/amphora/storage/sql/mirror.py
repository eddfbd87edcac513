"""What the SQLite and PostgreSQL mirrors share (see :mod:`amphora.storage.sqlite.mirror`
and :mod:`amphora.storage.postgresql.mirror`): the modes, the checks of index definitions, and
the parts of the mirror API written once over the storage-specific ones.

Private: a base of each storage's ``MirrorMixin``.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Sequence

from amphora.errors import InvalidQueryError, MirrorError, ObjectNotFoundError
from amphora.utils import maxtid, z64

__all__ = ["MODES", "MirrorBase", "QueryConnection", "check_fields", "class_filter",
           "placeholders", "check_before", "check_timeout", "timed_out"]


def placeholders(sql: str, style: str) -> str:
    """``sql`` as written for amphora (``%s`` placeholders, ``%%`` a literal ``%``, quoted
    strings and identifiers taken as they are) in a driver's style: ``"qmark"`` (SQLite's
    ``?``) or ``"format"`` (psycopg's ``%s``, where a ``%`` inside quotes is doubled)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"":
            end = i + 1
            while True:
                end = sql.find(char, end)
                if end < 0:
                    raise InvalidQueryError(f"unterminated quote in {sql!r}")
                if end + 1 < n and sql[end + 1] == char:  # a doubled quote inside
                    end += 2
                    continue
                break
            quoted = sql[i:end + 1]
            out.append(quoted.replace("%", "%%") if style == "format" else quoted)
            i = end + 1
        elif char == "%" and i + 1 < n and sql[i + 1] in "s%":
            if style == "qmark":
                out.append("?" if sql[i + 1] == "s" else "%")
            else:
                out.append(sql[i:i + 2])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


MODES = ("sync", "follow")
NO_MIRROR = "has no JSON mirror: create it first (db.create_mirror(), or `amphora mirror URI`)"
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class QueryConnection:
    """A thread's search connection, weakly referenced (database connections are not)
    so that it goes away with its thread."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: Any):
        self.conn = conn


def check_before(before: bytes | None) -> int | None:
    """The snapshot a search answers at (``before``, an 8-byte tid: the documents of the
    records with tids below it), as the signed integer the SQL storages keep; None: the
    latest documents."""
    if before is None:
        return None
    if not isinstance(before, bytes) or len(before) != 8:
        raise InvalidQueryError(f"before must be an 8-byte tid or None, not {before!r}")
    return int.from_bytes(before, "big", signed=True)


def check_timeout(timeout: float | None) -> float | None:
    """The seconds a search may run (None: no limit)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidQueryError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def timed_out(timeout: float | None, sql: str) -> InvalidQueryError:
    """The error of a search cancelled after ``timeout`` seconds."""
    return InvalidQueryError(f"the query ran longer than its timeout of {timeout:g} s and "
                             f"was cancelled (in {sql!r})")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise MirrorError(f"a mirror's mode is 'sync' or 'follow', not {mode!r}")
    return mode


def check_fields(fields: Sequence[str]) -> list[str]:
    """The fields of a text index: names of keys, dotted for nested ones."""
    if isinstance(fields, str) or not fields:
        raise InvalidQueryError("fields must be a non-empty list of field names")
    for field in fields:
        if not isinstance(field, str) or not _FIELD.match(field):
            raise InvalidQueryError(f"a text index field must be a name such as 'bio' "
                                    f"or 'address.city', not {field!r}")
    return list(fields)


def class_filter(class_name: str | None, column: str = "class_name") -> str:
    """An SQL condition on the class (``1 = 1`` for none), the name quoted as a literal."""
    if class_name is None:
        return "1 = 1"
    if not isinstance(class_name, str):
        raise InvalidQueryError(f"class_name must be a string, not {class_name!r}")
    return f"{column} = '" + class_name.replace("'", "''") + "'"


class MirrorBase:
    """The mirror API over what each storage provides: ``mirror_mode()``,
    ``mirror_watermark()``, ``create_mirror(progress, mode)``, ``_last_tid()``,
    ``loadBefore`` and ``_mirror_where`` (how error messages name the database)."""

    _mirror_where: str

    def mirror_mode(self) -> str | None:
        raise NotImplementedError

    def mirror_watermark(self) -> int:
        raise NotImplementedError

    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        raise NotImplementedError

    def _last_tid(self) -> int:
        raise NotImplementedError

    def _count_objects(self, conn: Any) -> int:
        raise NotImplementedError

    def _backfill_chunk(self, conn: Any, after: int) -> list:
        """Write the documents of the next current records after oid ``after``, in a
        transaction of their own; the rows written, ``(oid, tid, data)``."""
        raise NotImplementedError

    def _follow(self, conn: Any, progress: Callable[[int, int], None] | None) -> int:
        """Catch the documents up with the last transaction; the number of transactions."""
        raise NotImplementedError

    def _backfill(self, conn: Any, progress: Callable[[int, int], None] | None) -> int:
        """Write the document of every current record, chunk by chunk, telling
        ``progress(done, total)``; the number of documents."""
        total = self._count_objects(conn)
        done = 0
        after = -(1 << 63)
        while True:
            rows = self._backfill_chunk(conn, after)
            if not rows:
                return done
            done += len(rows)
            after = rows[-1][0]
            if progress is not None:
                progress(done, max(total, done))

    def _check_follow_mode(self) -> None:
        if self.mirror_mode() != "follow":
            raise MirrorError(f"{self._mirror_where} has no mirror in follow mode "
                              "(create it with mode='follow')")

    def _keep_following(self, conn: Any, until: float | None, interval: float,
                        progress: Callable[[int, int], None] | None) -> int:
        """The loop of ``follow_mirror`` on the follower's connection ``conn``."""
        done = 0
        while True:
            done += self._follow(conn, progress)
            if until is not None and time.monotonic() >= until:
                return done
            time.sleep(interval)

    def _refuse_sealed(self) -> None:
        """MirrorError if the database's records are sealed (an encrypted database, see
        :mod:`amphora.storage.encrypted`), as its root record shows: no document could be
        read from them, and one written by a client holding the keys would be plaintext."""
        from amphora.storage.encrypted import is_sealed
        try:
            root = self.loadBefore(z64, maxtid)
        except ObjectNotFoundError:
            return
        if root is not None and is_sealed(root[0]):
            raise MirrorError(f"{self._mirror_where} is encrypted (its records are sealed): "
                              "a JSON mirror would hold the objects in plaintext")

    def has_mirror(self) -> bool:
        """Whether the database keeps JSON documents of its objects."""
        return self.mirror_mode() is not None

    def rebuild_mirror(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Write every document again (after an upgrade of the JSON mapping, say)."""
        mode = self.mirror_mode()
        if mode is None:
            raise MirrorError(f"{self._mirror_where} has no mirror to rebuild")
        return self.create_mirror(progress, mode)

    def wait_for_mirror(self, tid: int | None = None, timeout: float | None = None,
                        interval: float = 0.05) -> bool:
        """Wait until the documents cover transaction ``tid`` (an integer; default: the
        last one now). False if ``timeout`` seconds passed first."""
        if tid is None:
            tid = self._last_tid()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.mirror_watermark() < tid:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(interval)
        return True
