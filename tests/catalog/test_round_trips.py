"""A query through a real ``amphora serve`` process costs round trips in proportion to
the height of the index B-trees it reads, not to the number of results: on a plain
database, and on an encrypted one (the server holds no key, and its storage sees no
references to read ahead)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from BTrees.OOBTree import OOBTree

import amphora
from amphora.catalog import Catalog, Eq, InRange
from amphora.server import protocol as p
from catalog_model import Task, cheap_keyring

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from clients import record_requests  # noqa: E402
from serverprocess import ServerProcess  # noqa: E402

COUNT = 3000


@pytest.fixture(scope="module", params=["plain", "encrypted"])
def server(request, tmp_path_factory):
    served = ServerProcess("memory://")
    served.keyring = None
    if request.param == "encrypted":
        served.keyring = cheap_keyring(tmp_path_factory.mktemp("keys") / "catalog.keyring")
    db = amphora.open(f"amphora://{served.address}", keyring=served.keyring)
    with db.transaction() as conn:
        catalog = Catalog.open(conn)
        catalog.add_field("points", class_=Task, attribute="points")
        catalog.add_keyword("tags", class_=Task, attribute="tags")
        conn.root.tasks = tasks = OOBTree()
        for n in range(COUNT):
            tasks[n] = task = Task(f"task {n}", points=n, tags=(f"group{n % 3}",))
            catalog.index(task)
    db.close()
    yield served
    served.stop()


def height(tree) -> int:
    """Levels of a B-tree (1: a single bucket)."""
    levels = 1
    state = tree.__getstate__()
    while state is not None and len(state) == 2 and type(state[0][0]).__name__.endswith("BTree"):
        levels += 1
        state = state[0][0].__getstate__()
    return levels + (state is not None and len(state) == 2)


def reads_of(server: ServerProcess, *conditions, **options) -> tuple[list[str], list[int]]:
    """A cold client's query: the read requests it sent, and the points found."""
    db = amphora.open(f"amphora://{server.address}", keyring=server.keyring)
    sent = record_requests(db)
    try:
        with db.transaction() as conn:
            found = [task.points for task in Catalog.open(conn).query(*conditions, **options)]
    finally:
        db.close()
    return [method for method in sent if method not in (p.SYNC, p.LAST_TRANSACTION)], found


def test_a_query_costs_round_trips_by_tree_height_not_by_results(server):
    few, found = reads_of(server, InRange("points", 100, 2000), sort="points", limit=10)
    assert found == list(range(100, 110))
    many, found = reads_of(server, InRange("points", 100, 2900), sort="points")
    assert found == list(range(100, 2901))
    keyword, found = reads_of(server, Eq("tags", "group1"), InRange("points", 0, 2999))
    assert found == list(range(1, COUNT, 3))
    filtered, found = reads_of(server, Eq("tags", "group2"), InRange("points", 1000, None),
                               sort="points", reverse=True, limit=5)
    assert found == [2999, 2996, 2993, 2990, 2987]

    db = amphora.open(f"amphora://{server.address}", keyring=server.keyring)
    with db.transaction() as conn:
        index = Catalog.open(conn).indexes()["points"].index
        levels = max(height(index._fwd_index), height(index._rev_index))
    db.close()
    assert levels >= 2  # the trees are deep enough for the bound to mean something
    # Reads: the root and the catalog's objects down to the index trees (a constant
    # handful), each tree level once for the condition and once for sorting, one more for
    # the sets of docids, one for the objects found.
    bound = 6 + 2 * levels + 2
    assert len(few) <= bound, few
    assert len(many) <= bound, many  # 2801 objects found, no more round trips
    assert len(keyword) <= bound + levels, keyword
    assert len(filtered) <= bound + levels, filtered

