"""ZConfig support: amphora storages in ZODB configuration files.

ZODB's configuration files, and the tools that read them (``zodbconvert``, the
``ZODB.config`` functions, Zope), can name an amphora storage by URI::

    %import amphora
    <zodb>
      <amphora>
        uri sqlite:///var/app.db
      </amphora>
    </zodb>

``%import amphora`` loads ``component.xml`` beside this module; its ``<amphora>`` section
takes ``uri`` (any URI :func:`amphora.open_storage` accepts) and ``read-only``.

Served by ZEO (``runzeo`` with such a section), a storage raises ZODB's own exception
classes: a ZEO server sends an exception by its class's name, and ZEO clients know only
ZODB's names (an amphora ``ObjectNotFoundError`` would reach them as a bare
``ServerException``, and a new database could not make its root).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

__all__ = ["StorageFactory"]

#: the storage methods a ZEO server calls that raise errors its clients must recognize
_ZEO_METHODS = ("load", "loadBefore", "loadSerial", "history", "new_oid", "store",
                "tpc_begin", "tpc_vote", "tpc_finish", "tpc_abort", "pack",
                "checkCurrentSerialInTransaction", "restore", "undo", "iterator")


class StorageFactory:
    """The datatype of the ``<amphora>`` section: ``open()`` returns the storage.

    (ZODB's ``BaseConfig`` shape, without importing ZODB.)
    """

    def __init__(self, config: Any):
        self.config = config
        self.name = config.getSectionName()

    def open(self, database_name: str = "unnamed", databases: Any = None) -> Any:
        from amphora.uri import open_storage
        storage = open_storage(self.config.uri, read_only=self.config.read_only)
        if "ZEO.runzeo" in sys.modules or "ZEO.StorageServer" in sys.modules:
            storage = _with_zodb_errors(storage)
        return storage


def _with_zodb_errors(storage: Any) -> Any:
    """``storage``, its methods that a ZEO server calls raising ZODB's exception class
    where amphora raised a subclass of it (same attributes and arguments)."""
    base = type(storage)
    methods = {name: _raising_zodb_errors(getattr(base, name))
               for name in _ZEO_METHODS if callable(getattr(base, name, None))}
    storage.__class__ = type(base.__name__, (base,), {"__module__": base.__module__,
                                                       **methods})
    return storage


def _raising_zodb_errors(method: Callable) -> Callable:
    from amphora.errors import AmphoraError

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except AmphoraError as exc:
            zodb = next((klass for klass in type(exc).__mro__
                         if klass.__module__ == "ZODB.POSException"), None)
            if zodb is None:
                raise
            translated = zodb.__new__(zodb)
            translated.args = exc.args
            translated.__dict__.update(exc.__dict__)
            raise translated from exc
    return call
