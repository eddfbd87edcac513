"""Loading the parts of B-trees a query touches, one level at a time.

A query reads a few paths down an index's B-trees. Followed naively, each node is one
storage read, and over a network one round trip. :func:`load_trees` loads every node of
one level of all the trees a step of a query needs in one batch (``conn.prefetch``), then
the next level, so a step costs as many round trips as its trees are high, whatever the
number of buckets or keys it reads.

A *span* is ``(low, high)``, both included, ``None`` for no bound; a list of them says
which keys of a tree are wanted (``None`` for all).
"""
from __future__ import annotations

import bisect
from typing import Any, Iterable, Iterator, Sequence

from persistent import Persistent

from amphora.errors import CatalogError

Span = tuple[Any, Any]
Spans = Sequence[Span] | None


def points(keys: Iterable[Any]) -> list[Span]:
    """Spans for exactly these keys; :class:`CatalogError` if they cannot be ordered
    (keys of one B-tree must compare with each other)."""
    keys = set(keys)
    try:
        return [(key, key) for key in sorted(keys)]
    except TypeError as exc:
        listed = ", ".join(sorted(map(repr, keys)))
        raise CatalogError(f"the values {listed} cannot be ordered together ({exc})") from exc


def _is_tree(node: Any) -> bool:
    name = type(node).__name__
    if name.endswith("Py"):  # the Python implementations of BTrees
        name = name[:-2]
    return name.endswith(("BTree", "TreeSet"))


def _wanted(spans: Spans, low: Any, high: Any) -> bool:
    """Whether a child holding the keys in ``[low, high)`` (``None``: unbounded) holds a
    key of ``spans``. ``spans`` are sorted and disjoint; only a single span is open."""
    if spans is None:
        return True
    if not spans:
        return False
    if len(spans) == 1:
        first, last = spans[0]
        return (first is None or high is None or first < high) and \
            (last is None or low is None or last >= low)
    if low is None:
        return high is None or spans[0][0] < high
    # the first span ending at or after low, then whether it starts before high
    at = bisect.bisect_left([last for _, last in spans], low)
    return at < len(spans) and (high is None or spans[at][0] < high)


def _merged(spans: Spans) -> Spans:
    """``spans`` sorted, overlapping ones joined (a single span may be open)."""
    if spans is None or len(spans) < 2:
        return spans
    merged: list[list[Any]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(first, last) for first, last in merged]


def _children(node: Any, spans: Spans) -> list[Any] | None:
    """The children of the tree ``node`` that can hold keys of ``spans``, in key order;
    ``None`` if ``node`` keeps its only bucket inside it (it is then its own leaf)."""
    state = node.__getstate__()
    if state is None:
        return []  # empty
    if len(state) < 2:
        return None
    items = state[0]
    children, keys = items[0::2], items[1::2]
    wanted = []
    for i, child in enumerate(children):
        low = keys[i - 1] if i else None
        high = keys[i] if i < len(keys) else None
        if _wanted(spans, low, high):
            wanted.append(child)
    return wanted


def load_trees(conn: Any, wanted: list[tuple[Any, Spans]]) -> None:
    """Load the nodes of each tree (or bucket, or any persistent object) in ``wanted``
    that can hold keys of its spans, level by level, one storage batch per level."""
    level = [(node, _merged(spans)) for node, spans in wanted if isinstance(node, Persistent)]
    while level:
        conn.prefetch([node for node, _ in level])
        below = []
        for node, spans in level:
            if _is_tree(node):
                below += [(child, spans) for child in _children(node, spans) or ()]
        level = below


def persistent_values(values: Iterable[Any]) -> list[Any]:
    """The persistent objects among ``values`` (a mapping's values may be sets or trees
    of their own, each stored apart)."""
    return [value for value in values if isinstance(value, Persistent)]


def ordered_leaves(conn: Any, tree: Any, spans: Spans) -> list[Any]:
    """The buckets of ``tree`` that can hold keys of ``spans``, in key order, loading
    only the tree's inner nodes (level by level), not the buckets. A tree whose only
    bucket is kept inside it is its own leaf."""
    conn.prefetch([tree])
    if not _is_tree(tree):
        return [tree]
    spans = _merged(spans)
    level, leaves = [tree], []
    while level:
        below = []
        for node in level:
            children = _children(node, spans)
            if children is None:
                leaves.append(node)
            for child in children or ():
                (below if _is_tree(child) else leaves).append(child)
        conn.prefetch(below)
        level = below
    return leaves


def values_in_order(conn: Any, tree: Any, spans: Spans, reverse: bool = False
                    ) -> Iterator[Any]:
    """The values of ``tree`` under the keys of ``spans``, in key order (or reversed),
    read a few buckets at a time: 4, then 16, 64... buckets per batch, so that taking
    the first few values reads little and taking many costs few round trips."""
    leaves = ordered_leaves(conn, tree, spans)
    if reverse:
        leaves.reverse()
    ranges = [(None, None)] if spans is None else list(_merged(spans))
    if reverse:
        ranges.reverse()
    at, batch = 0, 4
    while at < len(leaves):
        chunk = leaves[at:at + batch]
        at += len(chunk)
        batch *= 4
        conn.prefetch(chunk)
        values = []
        for leaf in chunk:
            for low, high in ranges:
                found = list(leaf.values(low, high))
                values += reversed(found) if reverse else found
        load_trees(conn, [(value, None) for value in persistent_values(values)])
        yield from values
