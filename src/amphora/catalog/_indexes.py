"""The three kinds of catalog index, each over one of ``zope.index``'s indexes.

A catalog index knows which objects it covers (instances of ``class_``), how to read the
indexed value from one (``attribute``: an attribute, or a method called without
arguments), and how to answer the conditions it supports. Before answering, it loads what
the answer reads level by level (see :mod:`._walk`); ``zope.index`` then computes the
answer from memory. Documents are identified by their object's oid as a 64-bit integer,
so the indexes use ``BTrees.family64``.
"""
from __future__ import annotations

from typing import Any, Iterator

import BTrees
from persistent import Persistent
from zope.index.field import FieldIndex
from zope.index.keyword import KeywordIndex
from zope.index.text import TextIndex
from zope.index.text.lexicon import CaseNormalizer, Lexicon, Splitter, StopWordRemover
from zope.index.text.okapiindex import OkapiIndex

from amphora.catalog._query import AllOf, AnyOf, Condition, Contains, Eq, InRange
from amphora.catalog._walk import load_trees, persistent_values, points, values_in_order
from amphora.errors import CatalogError

FAMILY = BTrees.family64
_MISSING = object()


class CatalogIndex(Persistent):
    """One declared index: its name, the class it covers and the attribute it reads."""

    kind = ""
    conditions: tuple[type, ...] = ()

    def __init__(self, name: str, class_: type, attribute: str):
        self.name = name
        self.class_ = class_
        self.attribute = attribute

    def covers(self, obj: Any) -> bool:
        return isinstance(obj, self.class_)

    def value(self, obj: Any) -> Any:
        """The value to index for ``obj``, or ``_MISSING`` (then it is left out)."""
        value = getattr(obj, self.attribute, None)
        if callable(value):
            value = value()
        return _MISSING if value is None else value

    def index_doc(self, docid: int, obj: Any) -> None:
        value = self.value(obj)
        if value is _MISSING:
            self.unindex_doc(docid)
        else:
            self._index_value(docid, value)

    def check(self, condition: Condition) -> None:
        if not isinstance(condition, self.conditions):
            allowed = ", ".join(kind.__name__ for kind in self.conditions)
            raise CatalogError(
                f"{type(condition).__name__} cannot query the {self.kind} index "
                f"{self.name!r} (it answers {allowed})")

    def unindex_doc(self, docid: int) -> None:
        raise NotImplementedError

    def _index_value(self, docid: int, value: Any) -> None:
        raise NotImplementedError

    def search(self, conn: Any, condition: Condition) -> Any:
        """The docids matching ``condition`` (a set, or a mapping docid -> score)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{self.kind} index {self.name!r}: "
                f"{self.class_.__qualname__}.{self.attribute}>")


class _ByValue(CatalogIndex):
    """Field and keyword indexes: a forward tree value -> docids and a reverse tree
    docid -> value(s), with the docids of each value in a set of its own."""

    index: Any
    zope_index: Any = None  # the zope.index class

    def __init__(self, name: str, class_: type, attribute: str):
        super().__init__(name, class_, attribute)
        self.index = self.zope_index(family=FAMILY)

    def unindex_doc(self, docid: int) -> None:
        self.index.unindex_doc(docid)

    def load_values(self, conn: Any, spans: Any) -> None:
        """Load the forward tree's entries under ``spans`` and their sets of docids."""
        index = self.index
        load_trees(conn, [(index._num_docs, None), (index._fwd_index, spans)])
        fwd = index._fwd_index
        if spans is None:
            sets = fwd.values()
        elif len(spans) == 1:
            sets = fwd.values(*spans[0])
        else:
            sets = [found for found in (fwd.get(low) for low, _ in spans) if found is not None]
        load_trees(conn, [(docids, None) for docids in persistent_values(sets)])

    def load_reverse(self, conn: Any, docids: Any) -> None:
        """Load the values of ``docids`` (what sorting by this index reads)."""
        index = self.index
        load_trees(conn, [(index._num_docs, None), (index._rev_index, points(docids))])
        load_trees(conn, [(values, None) for values in persistent_values(
            index._rev_index.get(docid) for docid in docids)])


class FieldIndexed(_ByValue):
    """One sortable value per object (a date, a number, a string): ``Eq``, ``InRange``,
    ``AnyOf``; results can be sorted by it."""

    kind = "field"
    conditions = (Eq, InRange, AnyOf)
    zope_index = FieldIndex

    def _index_value(self, docid: int, value: Any) -> None:
        self.index.index_doc(docid, value)

    @staticmethod
    def spans(condition: Condition) -> list[tuple[Any, Any]]:
        """The values ``condition`` matches, as spans of the forward tree's keys."""
        if isinstance(condition, Eq):
            return [(condition.value, condition.value)]
        if isinstance(condition, InRange):
            return [(condition.min, condition.max)]
        return points(condition.values)

    def search(self, conn: Any, condition: Condition) -> Any:
        spans = self.spans(condition)
        self.load_values(conn, spans)
        fwd = self.index._fwd_index
        if len(spans) == 1:
            return FAMILY.IF.multiunion(fwd.values(*spans[0]))
        return FAMILY.IF.multiunion([fwd[low] for low, _ in spans if low in fwd])

    def sort(self, conn: Any, docids: Any, reverse: bool, limit: int | None) -> list[int]:
        """``docids`` ordered by this index's value (those without one left out)."""
        self.load_reverse(conn, docids)
        return list(self.index.sort(docids, reverse=reverse, limit=limit))

    def in_order(self, conn: Any, spans: Any, within: Any, reverse: bool) -> Iterator[int]:
        """The docids under ``spans`` (``None``: all) in the order of their values, those
        in ``within`` only (unless it is ``None``): the forward tree read in order, a
        few buckets at a time, for a query that wants only the first few."""
        for docids in values_in_order(conn, self.index._fwd_index, spans, reverse):
            for docid in docids.keys():
                if within is None or docid in within:
                    yield docid


class KeywordIndexed(_ByValue):
    """A collection of keywords per object (tags): ``Eq`` (holds one), ``AnyOf``,
    ``AllOf``."""

    kind = "keyword"
    conditions = (Eq, AnyOf, AllOf)
    zope_index = KeywordIndex

    def _index_value(self, docid: int, value: Any) -> None:
        if isinstance(value, str):
            value = [value]
        if not value:
            self.unindex_doc(docid)
        else:
            self.index.index_doc(docid, list(value))

    def search(self, conn: Any, condition: Condition) -> Any:
        if isinstance(condition, Eq):
            words, operator = [condition.value], "and"
        else:
            words = list(condition.values)
            operator = "or" if isinstance(condition, AnyOf) else "and"
        self.load_values(conn, points(words))
        if not words:
            return FAMILY.IF.Set()
        return self.index.search(words, operator=operator)


class TextIndexed(CatalogIndex):
    """Text (a title, a description): ``Contains``, ranked by Okapi BM25."""

    kind = "text"
    conditions = (Contains,)

    def __init__(self, name: str, class_: type, attribute: str):
        super().__init__(name, class_, attribute)
        lexicon = Lexicon(Splitter(), CaseNormalizer(), StopWordRemover())
        self.index = TextIndex(lexicon, OkapiIndex(lexicon, family=FAMILY))

    def value(self, obj: Any) -> Any:
        value = super().value(obj)
        if value is _MISSING or isinstance(value, str):
            return value
        return " ".join(value)

    def _index_value(self, docid: int, value: Any) -> None:
        self.index.index_doc(docid, value)

    def unindex_doc(self, docid: int) -> None:
        self.index.unindex_doc(docid)

    def search(self, conn: Any, condition: Condition) -> Any:
        text = self.index
        lexicon, okapi = text.lexicon, text.index
        load_trees(conn, [(lexicon, None), (okapi, None)])
        terms = lexicon.parseTerms(condition.text)
        words = [(term.split("*")[0].split("?")[0], None) if lexicon.isGlob(term)
                 else (term, term) for term in terms]
        prefixes = [(low, low + "\U0010ffff") for low, high in words if high is None]
        exact = points(low for low, high in words if high is not None)
        load_trees(conn, [(lexicon.wordCount, None), (okapi.documentCount, None),
                          (okapi.wordCount, None), (okapi._totaldoclen, None),
                          (lexicon._wids, sorted(exact + prefixes) or [])])
        wids = {wid for word, _ in exact for wid in [lexicon._wids.get(word)] if wid}
        for low, high in prefixes:
            wids.update(lexicon._wids.values(low, high))
        load_trees(conn, [(okapi._wordinfo, points(wids))])
        found = [okapi._wordinfo.get(wid) for wid in wids]
        load_trees(conn, [(docs, None) for docs in persistent_values(found)])
        docids = {docid for docs in found if docs is not None for docid in docs.keys()}
        wanted = [(okapi._docweight, points(docids))]
        if '"' in condition.text:  # a phrase reads the words of each candidate
            wanted.append((okapi._docwords, points(docids)))
        load_trees(conn, wanted)
        try:
            return text.apply(condition.text)
        except Exception as exc:  # zope.index's ParseError for a malformed query
            raise CatalogError(
                f"the text query {condition.text!r} on {self.name!r} is malformed: {exc}"
            ) from exc

