"""Fixtures of the catalog tests: a database per storage kind (memory and SQLite), with
a catalog of tasks declared in its root."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import amphora
from amphora.catalog import Catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog_model import declare  # noqa: E402


@pytest.fixture(params=["memory", "sqlite"])
def db(request, tmp_path):
    uri = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/catalog.db"
    database = amphora.open(uri)
    with database.transaction() as conn:
        declare(Catalog.open(conn))
    yield database
    database.close()

