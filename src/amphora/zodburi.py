"""zodburi resolvers: applications configured by URI through ``zodburi`` (Pyramid's
``pyramid_zodbconn``, for one) open amphora storages.

``zodburi.resolve_uri(uri)`` looks the URI's scheme up among the ``zodburi.resolvers``
entry points and calls the resolver with the URI; the resolver returns
``(storage_factory, dbkw)``: a callable of no arguments that opens the storage, and the
keyword arguments for ``ZODB.DB`` that the URI gave. amphora registers:

==================================  =================================================
``postgresql://...``                 :func:`amphora.open_storage` of the URI itself
``amphora://...``, ``amphoras://``   (the schemes are amphora's alone)
``amphora+sqlite:///app.db``         any amphora URI behind ``amphora+``: ``sqlite``,
``amphora+memory://`` ...            ``memory``, ``demo`` and ``before`` are taken
                                     by zodburi (``memory``, ``demo``: ZODB's
                                     storages) and RelStorage (``sqlite``), and which
                                     registration wins is not defined
==================================  =================================================

zodburi's database keywords in the query string (``database_name`` and the
``connection_*`` ones, such as ``connection_cache_size``) are taken out and returned as
``dbkw`` (zodburi checks and converts them); everything else is the amphora URI, opened
as :func:`amphora.open_storage` opens it, with its own options. The storage is opened
when the factory is called, not when the URI is resolved.
"""
from __future__ import annotations

import urllib.parse
from typing import Any, Callable

from amphora.errors import InvalidURIError

__all__ = ["resolve", "PREFIX"]

#: what names an amphora URI whose own scheme another zodburi resolver may claim
PREFIX = "amphora+"


def _database_keyword(name: str) -> bool:
    return name == "database_name" or name.startswith("connection_")


def resolve(uri: str) -> tuple[Callable[[], Any], dict[str, str]]:
    """The zodburi resolver for every scheme amphora registers: ``(factory, dbkw)``.

    Raises :class:`~amphora.errors.InvalidURIError` at once for a URI that is not one
    (the storage's own errors come from the factory).
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidURIError(f"{uri!r} is not a storage URI; expected e.g. "
                              "'amphora+sqlite:///app.db' or 'postgresql://host/db'")
    if uri.startswith(PREFIX):
        uri = uri[len(PREFIX):]
    location, _, query = uri.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    dbkw = {name: value for name, value in pairs if _database_keyword(name)}
    rest = urllib.parse.urlencode([(name, value) for name, value in pairs
                                   if not _database_keyword(name)])
    storage_uri = f"{location}?{rest}" if rest else location

    def factory() -> Any:
        from amphora.uri import open_storage
        return open_storage(storage_uri)
    return factory, dbkw
