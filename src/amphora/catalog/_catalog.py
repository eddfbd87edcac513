"""The catalog: indexes kept inside the database, queried on the client."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

from persistent import Persistent
from persistent.mapping import PersistentMapping

from amphora.catalog._indexes import (FAMILY, CatalogIndex, FieldIndexed, KeywordIndexed,
                                      TextIndexed)
from amphora.catalog._query import Condition, Contains
from amphora.catalog._walk import load_trees
from amphora.errors import CatalogError, ObjectNotFoundError
from amphora.utils import p64, u64


class Catalog(Persistent):
    """Indexes over the objects of a database, stored in it like any other object.

    Store it where the application finds it (``Catalog.open(conn)`` finds or creates
    ``conn.root()["catalog"]``), then declare what to index per class (declaring an
    index again as it was is a no-op; differently, an error)::

        catalog.add_field("due", class_=Task, attribute="due")
        catalog.add_keyword("tags", class_=Task, attribute="tags")
        catalog.add_text("text", class_=Task, attribute="title")

    An index reads ``attribute`` of each object of ``class_`` (calling it if it is a
    method); an object whose value is ``None`` (or missing) is left out of that index.
    Objects are identified by their oid, so the catalog holds no reference to them: an
    object that becomes unreachable is still found until it is unindexed, and once a
    pack removed it, queries skip it.

    ``catalog.index(obj)`` indexes (or reindexes) one object and ``catalog.unindex(obj)``
    removes it; :func:`index_on_commit` does it for every changed object at commit.
    Queries (:meth:`query`) run in the connection the catalog was loaded from.
    """

    def __init__(self) -> None:
        self._indexes: PersistentMapping = PersistentMapping()

    @classmethod
    def open(cls, conn: Any, name: str = "catalog") -> "Catalog":
        """The catalog stored at ``conn.root()[name]``, created (and stored there) if
        there is none yet."""
        root = conn.root()
        catalog = root.get(name)
        if catalog is None:
            catalog = root[name] = cls()
            conn.add(catalog)
        elif not isinstance(catalog, Catalog):
            raise CatalogError(f"the root's {name!r} is a {type(catalog).__qualname__}, "
                               f"not a Catalog")
        return catalog

    # -- declarations -------------------------------------------------------------------
    def add_field(self, name: str, *, class_: type, attribute: str) -> None:
        """A field index: one sortable value per object (``Eq``, ``InRange``, ``AnyOf``)."""
        self._add(FieldIndexed, name, class_, attribute)

    def add_keyword(self, name: str, *, class_: type, attribute: str) -> None:
        """A keyword index: a collection of strings per object (``Eq``, ``AnyOf``, ``AllOf``)."""
        self._add(KeywordIndexed, name, class_, attribute)

    def add_text(self, name: str, *, class_: type, attribute: str) -> None:
        """A full-text index ranked by Okapi BM25 (``Contains``)."""
        self._add(TextIndexed, name, class_, attribute)

    def _add(self, kind: type[CatalogIndex], name: str, class_: type, attribute: str) -> None:
        if not isinstance(name, str) or not name:
            raise CatalogError(f"an index name must be a non-empty string, not {name!r}")
        declared = self._indexes.get(name)
        if declared is not None:
            if type(declared) is kind and declared.class_ is class_ \
                    and declared.attribute == attribute:
                return  # declared again as before (at each start of the application)
            raise CatalogError(f"the catalog already has an index named {name!r}: "
                               f"{self._indexes[name]!r}")
        if not isinstance(class_, type):
            raise CatalogError(f"class_ of index {name!r} must be a class, not {class_!r}")
        if not isinstance(attribute, str) or not attribute:
            raise CatalogError(f"attribute of index {name!r} must be a non-empty string, "
                               f"not {attribute!r}")
        self._indexes[name] = kind(name, class_, attribute)

    def indexes(self) -> dict[str, CatalogIndex]:
        """The declared indexes, by name."""
        return dict(self._indexes)

    def watches(self, obj: Any) -> bool:
        """Whether some index covers ``obj``'s class."""
        return any(index.covers(obj) for index in self._indexes.values())

    # -- indexing -------------------------------------------------------------------------
    def index(self, obj: Any) -> None:
        """Index ``obj`` (again) in every index covering its class. A new object is added
        to the catalog's connection first, to get its oid."""
        covering = [index for index in self._indexes.values() if index.covers(obj)]
        if not covering:
            raise CatalogError(f"no index of the catalog covers {type(obj).__qualname__}")
        docid = self._docid(obj, add=True)
        for index in covering:
            try:
                index.index_doc(docid, obj)
            except TypeError as exc:  # a value the index's keys cannot be compared with
                raise CatalogError(
                    f"cannot index {obj!r} in {index.name!r}: its {index.attribute} "
                    f"({getattr(obj, index.attribute, None)!r}) does not fit the index "
                    f"({exc})") from exc

    def unindex(self, obj_or_oid: Any) -> None:
        """Remove an object (or the object of an oid) from every index."""
        if isinstance(obj_or_oid, bytes):
            docid = u64(obj_or_oid)
        else:
            docid = self._docid(obj_or_oid, add=False)
            if docid is None:
                return  # never stored, so never indexed
        for index in self._indexes.values():
            index.unindex_doc(docid)

    def _docid(self, obj: Any, add: bool) -> int | None:
        if getattr(obj, "_p_oid", None) is None:
            if not add:
                return None
            if self._p_jar is None:
                raise CatalogError("store the catalog in the database before indexing "
                                   "new objects with it")
            self._p_jar.add(obj)
        return u64(obj._p_oid)

    # -- queries ------------------------------------------------------------------------
    def query(self, *conditions: Condition, sort: str | None = None, reverse: bool = False,
              limit: int | None = None) -> list[Any]:
        """The objects matching every condition, as live objects of this connection.

        Ordered by the field index ``sort`` if given (objects without a value in it are
        left out), else by relevance if a ``Contains`` condition is given, else by oid;
        at most ``limit`` of them. Raises :class:`CatalogError` 
        for an unknown index, a condition its index cannot answer, or a bad limit.
        """
        return list(self._query(conditions, sort, reverse, limit))

    def _query(self, conditions: tuple[Condition, ...], sort: str | None, reverse: bool,
               limit: int | None) -> Iterator[Any]:
        conn = self._p_jar
        if conn is None:
            raise CatalogError("the catalog is not stored in a database yet")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise CatalogError(f"limit must be a positive integer, not {limit!r}")
        if not conditions and sort is None:
            raise CatalogError("a query needs a condition or a sort index")
        sort_index = self._named(sort) if sort is not None else None
        if sort_index is not None and not isinstance(sort_index, FieldIndexed):
            raise CatalogError(f"cannot sort by the {sort_index.kind} index {sort!r}: "
                               f"only field indexes sort")
        named = [(self._named(condition.index), condition) for condition in conditions]
        for index, condition in named:
            index.check(condition)
        used = [index for index, _ in named] + ([sort_index] if sort_index else [])
        load_trees(conn, [(index, None) for index in used])  # their zope.index objects next
        load_trees(conn, [(index.index, None) for index in used])
        # With a sort index and a limit, the sort index's forward tree is read in order
        # until enough objects are found (its own condition, if any, gives the keys to
        # read); the other conditions only filter.
        in_order = sort_index is not None and limit is not None \
            and sum(index is sort_index for index, _ in named) <= 1
        order_spans = None
        if in_order:
            for index, condition in named:
                if index is sort_index:
                    order_spans = sort_index.spans(condition)
            named = [(index, condition) for index, condition in named if index is not sort_index]
        results: Any = None
        scores: Any = None
        for index, condition in named:
            found = index.search(conn, condition)
            if isinstance(condition, Contains):
                scores = found if scores is None else _weighted(scores, found)
                found = found.keys()
            results = _intersect(results, found)
            if not results:
                return
        ordered: Iterable[int]
        if in_order:
            ordered = sort_index.in_order(conn, order_spans, results, reverse)
        elif sort_index is not None:
            if results is None:
                sort_index.load_values(conn, None)
                results = sort_index.index._rev_index.keys()
            ordered = sort_index.sort(conn, results, reverse, None)
        elif scores is not None:
            ordered = sorted(results, key=lambda docid: (-scores[docid], docid))
            if reverse:
                ordered.reverse()
        else:
            ordered = sorted(results, reverse=reverse)
        yield from _live(conn, ordered, limit)

    def _named(self, name: str) -> CatalogIndex:
        index = self._indexes.get(name)
        if index is None:
            known = ", ".join(sorted(self._indexes)) or "none"
            raise CatalogError(f"the catalog has no index named {name!r} (it has: {known})")
        return index

    def __repr__(self) -> str:
        return f"<Catalog of {len(self._indexes)} indexes>"


def _intersect(results: Any, found: Any) -> Any:
    if results is None:
        return FAMILY.IF.Set(found)
    return FAMILY.IF.intersection(results, FAMILY.IF.Set(found))


def _weighted(scores: Any, found: Any) -> Any:
    """Two text conditions' scores: summed, for the documents matching both."""
    return {docid: scores[docid] + found[docid] for docid in scores.keys() if docid in found}


def _live(conn: Any, ordered: Iterable[int], limit: int | None) -> Iterator[Any]:
    """The objects of the ``ordered`` docids, loaded a batch at a time (as many as are
    still wanted); those a pack removed are skipped, and more are read instead."""
    docids = iter(ordered)
    given = 0
    while limit is None or given < limit:
        batch = [p64(docid) for docid in itertools.islice(
            docids, None if limit is None else limit - given)]
        if not batch:
            return
        conn.prefetch(batch)
        for oid in batch:
            try:
                obj = conn.get(oid)
                obj._p_activate()
            except ObjectNotFoundError:
                continue
            given += 1
            yield obj


def index_on_commit(db: Any, name: str = "catalog",
                    catalog: Callable[[Any], Catalog | None] | None = None
                    ) -> Callable[[Any], None]:
    """Keep a catalog up to date: before each commit on ``db``, every changed or new
    object of a class some index covers is reindexed.

    The catalog is ``conn.root()[name]``, or what ``catalog(conn)`` returns (``None``:
    nothing to do). Returns the hook; ``db.remove_before_commit_hook(hook)`` stops it.
    Objects are not unindexed automatically: call :meth:`Catalog.unindex` when an object
    is removed from the application's data.
    """
    find = catalog if catalog is not None else (lambda conn: conn.root().get(name))

    def reindex_changed(conn: Any) -> None:
        found = find(conn)
        if found is None:
            return
        done: set[bytes] = set()
        while True:
            changed = [obj for obj in conn.pending_objects()
                       if obj._p_oid not in done and found.watches(obj)]
            if not changed:
                return
            for obj in changed:
                done.add(obj._p_oid)
                found.index(obj)

    db.add_before_commit_hook(reindex_changed)
    return reindex_changed
