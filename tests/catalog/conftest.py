"""Fixtures of the catalog tests: a database per storage kind (memory, SQLite, and SQLite
with every record sealed), with a catalog of tasks declared in its root."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import amphora
from amphora.catalog import Catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_model import cheap_keyring, declare  # noqa: E402


@pytest.fixture(params=["memory", "sqlite", "encrypted->sqlite"])
def db(request, tmp_path):
    uri = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/catalog.db"
    keyring = None
    if request.param.startswith("encrypted"):
        keyring = cheap_keyring(tmp_path / "catalog.keyring")
    database = amphora.open(uri, keyring=keyring)
    with database.transaction() as conn:
        declare(Catalog.open(conn))
    yield database
    database.close()

