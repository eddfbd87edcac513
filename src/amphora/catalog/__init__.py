"""A catalog kept inside the database and queried on the client.

Indexes (field, keyword, and full text ranked by Okapi BM25, from ``zope.index``) are
B-trees stored in the database like the application's objects. A query loads the parts
of them it reads one tree level at a time, in batches, so over a network it costs round
trips in proportion to the trees' height, not to the number of results; it then returns
the matching objects, loaded in one more batch. It works the same on every storage,
including those whose server cannot read the records.

>>> import amphora
>>> from amphora.catalog import Catalog, Eq
>>> from persistent.mapping import PersistentMapping
>>> db = amphora.open("memory://")
>>> with db.transaction() as conn:
...     catalog = Catalog.open(conn)
...     catalog.add_field("colour", class_=PersistentMapping, attribute="colour")
...     fruit = PersistentMapping()
...     fruit.colour = "red"
...     conn.root.fruit = fruit
...     catalog.index(fruit)
>>> with db.transaction() as conn:
...     [found.colour for found in conn.root.catalog.query(Eq("colour", "red"))]
['red']
"""
from __future__ import annotations

from amphora.catalog._catalog import Catalog, index_on_commit
from amphora.catalog._indexes import CatalogIndex, FieldIndexed, KeywordIndexed, TextIndexed
from amphora.catalog._query import AllOf, AnyOf, Condition, Contains, Eq, InRange
from amphora.errors import CatalogError

__all__ = [
    "AllOf", "AnyOf", "Catalog", "CatalogError", "CatalogIndex", "Condition", "Contains",
    "Eq", "FieldIndexed", "InRange", "KeywordIndexed", "TextIndexed", "index_on_commit",
]
