"""SQL search over the JSON mirror, answered with live objects.

A storage that can keep a JSON mirror (``supports_mirror``) stores beside each current
record its class name and its state as JSON (see :mod:`amphora.jsonpickle` for the
mapping), in a table ``amphora_objects(oid, tid, class_name, state)`` that plain SQL
can query. :class:`DatabaseSearch` (mixed into :class:`amphora.DB`) makes the mirror,
its indexes and plain-row queries; :class:`ConnectionSearch` (mixed into
:class:`amphora.Connection`) turns the oids a query finds into the connection's objects.

Placeholders are written ``%s`` on every storage (``%%`` for a literal ``%``).

A connection's searches answer at its snapshot (the storage's ``query_mirror`` with
``before`` the connection's start): exactly the objects whose documents matched then,
whatever was committed since, each as the connection sees it. In a history-free storage
objects replaced since the snapshot are left out (no revision of the snapshot is kept; the
connection could not load them either). With a ``follow`` mirror, objects changed by
commits the follower has not reached yet match by their documents at its watermark.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from amphora.errors import (InvalidQueryError, MirrorError, ObjectNotFoundError,
                            ReadConflictError)
from amphora.storage.sql.mirror import placeholders
from amphora.utils import p64, u64

__all__ = ["SearchResults", "DatabaseSearch", "ConnectionSearch", "placeholders"]


class SearchResults(list):
    """The objects a search found, in the query's order; ``total`` is the number of
    matches before ``limit`` and ``offset`` applied."""

    def __init__(self, objects: Iterable[Any], total: int):
        super().__init__(objects)
        self.total = total

    def __repr__(self) -> str:
        return f"SearchResults({list.__repr__(self)}, total={self.total})"


def _mirror_of(storage: Any) -> Any:
    if not getattr(storage, "supports_mirror", False):
        why = getattr(storage, "no_mirror_because", None) or "SQLite and PostgreSQL storages can"
        raise MirrorError(f"{type(storage).__name__} cannot keep a JSON mirror ({why})")
    return storage


def _page(limit: int | None, offset: int) -> str:
    for name, value in (("limit", limit), ("offset", offset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise InvalidQueryError(f"{name} must be a non-negative integer, not {value!r}")
    if limit is None:
        return f" LIMIT -1 OFFSET {offset}" if offset else ""
    return f" LIMIT {limit} OFFSET {offset}"


class DatabaseSearch:
    """The mirror's side of :class:`amphora.DB` (needs ``self.storage``)."""

    storage: Any

    def create_mirror(self, progress: Callable[[int, int], None] | None = None,
                      mode: str = "sync") -> int:
        """Keep a JSON document of every object from now on, and write those of the
        objects already stored; ``progress(done, total)`` is called as it goes. Returns
        the number of documents written.

        ``mode="sync"`` (the default): every commit writes its documents in its own
        transaction. ``mode="follow"``: commits write none, and a follower
        (:meth:`follow_mirror`, or the ``amphora follow URI`` command) catches up
        afterwards; searches see what it has reached (:meth:`wait_for_mirror`)."""
        return _mirror_of(self.storage).create_mirror(progress, mode)

    def rebuild_mirror(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Write every document again."""
        return _mirror_of(self.storage).rebuild_mirror(progress)

    def follow_mirror(self, until: float | None = 0.0, interval: float = 0.2) -> int:
        """Run the follower of a ``follow`` mirror: catch up (and with ``until``, a
        ``time.monotonic()`` deadline or None for ever, keep following). Returns the
        number of transactions it covered."""
        return _mirror_of(self.storage).follow_mirror(until, interval)

    def wait_for_mirror(self, tid: bytes | None = None, timeout: float | None = None) -> bool:
        """Wait until the documents reflect transaction ``tid`` (default: the last one
        committed); False when ``timeout`` seconds passed first. Immediate for a
        ``sync`` mirror."""
        return _mirror_of(self.storage).wait_for_mirror(
            None if tid is None else u64(tid), timeout)

    def mirror_mode(self) -> str | None:
        """``"sync"``, ``"follow"``, or None when the database has no mirror."""
        if not getattr(self.storage, "supports_mirror", False):
            return None
        return self.storage.mirror_mode()

    def drop_mirror(self) -> None:
        """Stop keeping documents and remove them, with their indexes."""
        _mirror_of(self.storage).drop_mirror()

    def has_mirror(self) -> bool:
        return bool(getattr(self.storage, "supports_mirror", False)) and self.storage.has_mirror()

    def create_index(self, name: str, expression: str, class_name: str | None = None,
                     unique: bool = False) -> None:
        """An index on an SQL ``expression`` of the documents, e.g.
        ``db.create_index("person_email", "lower(state->>'email')", class_name="app.Person")``;
        with ``class_name`` it covers only objects of that class."""
        _mirror_of(self.storage).create_mirror_index(name, expression, class_name, unique)

    def create_text_index(self, name: str, fields: Sequence[str],
                          class_name: str | None = None) -> None:
        """A full-text index over the text of ``fields`` of each document, searched with
        :meth:`ConnectionSearch.search_text`."""
        _mirror_of(self.storage).create_text_index(name, list(fields), class_name)

    def query_data(self, sql: str, *params: Any) -> list[tuple]:
        """The rows of a read-only query, e.g.
        ``db.query_data("select class_name, count(*) from amphora_objects group by 1")``."""
        return _mirror_of(self.storage).query_mirror(sql, params)


class ConnectionSearch:
    """The mirror's side of :class:`amphora.Connection` (uses its ``prefetch`` and
    ``get``)."""

    _storage: Any
    _start: bytes  # the connection's snapshot: it reads the records with tids below it

    def search(self, sql: str, *params: Any) -> SearchResults:
        """The objects whose oids the query's first column gives, in its order:
        ``conn.search("select oid from amphora_objects where state->>'name' = %s", "ann")``."""
        rows = _mirror_of(self._storage).query_mirror(sql, params, before=self._start)
        return SearchResults(self._objects(rows), len(rows))

    def where(self, condition: str, *params: Any, class_name: str | None = None,
              order_by: str | None = None, limit: int | None = None,
              offset: int = 0) -> SearchResults:
        """The objects whose documents meet an SQL ``condition`` (``state`` is the
        document, ``class_name`` its class), in oid order unless ``order_by`` says
        otherwise; ``limit``/``offset`` take one batch, ``total`` counts all matches."""
        mirror = _mirror_of(self._storage)
        where = f"({condition})"
        if class_name is not None:
            where += " AND class_name = %s"
            params = (*params, class_name)
        # the total comes with the rows (a window over all matches, before the limit)
        rows = mirror.query_mirror(
            f"SELECT oid, count(*) OVER () FROM amphora_objects WHERE {where}"
            f" ORDER BY {order_by or 'oid'}" + _page(limit, offset), params,
            before=self._start)
        if rows:
            total = rows[0][1]
        else:  # no row to carry it: an empty result, or an offset past the end
            total = 0 if not offset else mirror.query_mirror(
                f"SELECT count(*) FROM amphora_objects WHERE {where}", params,
                before=self._start)[0][0]
        return SearchResults(self._objects(rows), total)

    def search_text(self, index: str, query: str, limit: int | None = 20,
                    offset: int = 0) -> SearchResults:
        """The objects matching a full-text ``query`` (``"database AND python"``) in the
        text index ``index``, best matches first."""
        mirror = _mirror_of(self._storage)
        sql, params = mirror.text_query(index, query)
        total = mirror.query_mirror(f"SELECT count(*) FROM ({sql}) AS matches", params,
                                    before=self._start)[0][0]
        rows = mirror.query_mirror(sql + _page(limit, offset), params, before=self._start)
        return SearchResults(self._objects(rows), total)

    def _objects(self, rows: Sequence[tuple]) -> list[Any]:
        oids = []
        for row in rows:
            if not row or isinstance(row[0], bool) or not isinstance(row[0], int):
                raise InvalidQueryError(
                    f"a search's first column must be the oid (an integer), not {row[:1]!r}")
            oids.append(p64(row[0] & 0xFFFF_FFFF_FFFF_FFFF))  # stored as signed 64 bits
        self.prefetch(oids)  # one read for all, in this snapshot
        found = []
        for oid in oids:
            try:
                found.append(self.get(oid))
            except (ObjectNotFoundError, ReadConflictError):
                continue  # created (or, history-free, replaced) after this snapshot
        return found
