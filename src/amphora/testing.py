"""A pytest plugin: each test gets its own database over one base filled once.

Installed with amphora (a ``pytest11`` entry point), so its fixtures are there in any
project whose tests run with amphora installed; ``-p no:amphora`` turns it off. It adds
fixtures only, all named ``amphora_*``, and does nothing until a test asks for one.

``amphora_base_uri`` (session)
    The URI of the base database; ``memory://`` unless a ``conftest.py`` overrides the
    fixture (``sqlite:///...`` keeps the base between sessions).
``amphora_populate`` (session)
    A function that fills the base, called once per session with the base
    :class:`amphora.DB`; none unless overridden.
``amphora_base_db`` (session)
    The base database, filled. Tests should not write to it: use ``amphora_db``.
``amphora_db`` (function)
    A fresh :class:`amphora.DB` on a :class:`~amphora.storage.demo.DemoStorage` layer
    over the base: a test reads the base's data and writes as it likes; the layer (in
    memory) is thrown away after the test, so no test sees another's writes.

A ``conftest.py``::

    import pytest

    @pytest.fixture(scope="session")
    def amphora_populate():
        def populate(db):
            with db.transaction() as conn:
                conn.root.accounts = {"ann": 10}
        return populate
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

__all__ = ["amphora_base_uri", "amphora_populate", "amphora_base_db", "amphora_db"]


@pytest.fixture(scope="session")
def amphora_base_uri() -> str:
    """The base database's URI (override to use another)."""
    return "memory://"


@pytest.fixture(scope="session")
def amphora_populate() -> Callable[[Any], None] | None:
    """A function ``populate(db)`` that fills the base once (override to give one)."""
    return None


@pytest.fixture(scope="session")
def amphora_base_db(amphora_base_uri: str, amphora_populate: Callable[[Any], None] | None
                    ) -> Iterator[Any]:
    """The session's base database, filled by ``amphora_populate``."""
    import amphora
    db = amphora.open(amphora_base_uri)
    try:
        if amphora_populate is not None:
            amphora_populate(db)
        yield db
    finally:
        db.close()


@pytest.fixture
def amphora_db(amphora_base_db: Any) -> Iterator[Any]:
    """A database of the test's own: a layer over the base, discarded afterwards."""
    import amphora
    from amphora.storage.demo import DemoStorage
    layer = DemoStorage(amphora_base_db.storage, close_base_on_close=False)
    db = amphora.DB(layer)
    try:
        yield db
    finally:
        db.close()
