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
"""
from __future__ import annotations

from typing import Any

__all__ = ["StorageFactory"]


class StorageFactory:
    """The datatype of the ``<amphora>`` section: ``open()`` returns the storage.

    (ZODB's ``BaseConfig`` shape, without importing ZODB.)
    """

    def __init__(self, config: Any):
        self.config = config
        self.name = config.getSectionName()

    def open(self, database_name: str = "unnamed", databases: Any = None) -> Any:
        from amphora.uri import open_storage
        return open_storage(self.config.uri, read_only=self.config.read_only)
