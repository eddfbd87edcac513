"""SQL search over the JSON mirror, returning live objects: on every storage that can keep
a mirror (the others refuse with MirrorError)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import transaction

import amphora
from amphora import InvalidQueryError, MirrorError

from conformance.models import Item

pytestmark = pytest.mark.timeout(60)

PEOPLE = [
    ("Ann", "Ann@Example.com", "writes python and databases", 41),
    ("Bob", "bob@example.org", "plays the trumpet", 35),
    ("Cid", "cid@example.com", "a database administrator who likes python", 29),
    ("Dee", "dee@example.net", "python teacher", 52),
]


@pytest.fixture
def mirrored(make_storage, storage):
    if not getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} cannot keep a JSON mirror")
    db = amphora.DB(storage)
    with db.transaction() as conn:
        for name, email, bio, age in PEOPLE:
            conn.root()[name] = Item(name, email=email, bio=bio, age=age, tags={"x", name})
    db.create_mirror()
    yield db
    db.close()


def names(objects) -> list[str]:
    return [obj.value for obj in objects]


def test_a_storage_without_a_mirror_says_so(make_storage, storage):
    if getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} can keep a mirror")
    db = amphora.DB(storage)
    try:
        with pytest.raises(MirrorError, match="cannot keep a JSON mirror"):
            db.create_mirror()
        with pytest.raises(MirrorError):
            db.open().where("1 = 1")
        assert not db.has_mirror()
    finally:
        db.close()


def test_where_returns_live_objects_of_the_connection(mirrored):
    conn = mirrored.open()
    found = conn.where("lower(state->>'email') = lower(%s)", "ANN@example.com")
    assert names(found) == ["Ann"] and found.total == 1
    assert found[0] is conn.root()["Ann"]  # the connection's own object
    conn.close()


def test_where_filters_orders_and_pages_with_a_total(mirrored):
    conn = mirrored.open()
    condition = "state->>'bio' LIKE %s"
    everyone = conn.where(condition, "%python%", order_by="CAST(state->>'age' AS integer)")
    assert names(everyone) == ["Cid", "Ann", "Dee"] and everyone.total == 3
    page = conn.where(condition, "%python%", order_by="CAST(state->>'age' AS integer)", limit=2, offset=1)
    assert names(page) == ["Ann", "Dee"] and page.total == 3
    by_class = conn.where("1 = 1", class_name="conformance.models.Item")
    assert sorted(names(by_class)) == ["Ann", "Bob", "Cid", "Dee"]
    assert conn.where("1 = 1", class_name="no.such.Class").total == 0
    conn.close()


def test_commits_keep_the_mirror_current_and_pack_removes_documents(mirrored):
    with mirrored.transaction() as conn:
        conn.root()["Bob"].email = "robert@example.org"
        conn.root()["Eve"] = Item("Eve", email="eve@example.com", bio="", age=30)
        del conn.root()["Dee"]
    rows = mirrored.query_data("SELECT state->>'email' FROM amphora_objects"
                               " WHERE class_name = %s ORDER BY 1", "conformance.models.Item")
    assert [row[0] for row in rows] == ["Ann@Example.com", "cid@example.com",
                                        "dee@example.net", "eve@example.com",
                                        "robert@example.org"]
    dee = "SELECT count(*) FROM amphora_objects WHERE state->>'email' = %s"
    assert mirrored.query_data(dee, "dee@example.net") == [(1,)]
    mirrored.pack()  # Dee is no longer reachable: her document goes with her
    assert mirrored.query_data(dee, "dee@example.net") == [(0,)]


class Person(Item):
    """What Item objects become in a migration."""


def test_a_document_follows_a_change_of_class(mirrored):
    rows = "SELECT class_name, state->>'email' FROM amphora_objects WHERE oid = %s"
    with mirrored.transaction() as conn:
        bob = conn.root()["Bob"]
        bob.__class__ = Person  # a migration: the next record names the new class
        bob._p_changed = True
        ann = conn.root()["Ann"]
        ann.email = "ann@example.com"  # the same class: the other statement
        oids = [int.from_bytes(obj._p_oid, "big") for obj in (bob, ann)]
    assert mirrored.query_data(rows, oids[0]) == [(f"{__name__}.Person", "bob@example.org")]
    assert mirrored.query_data(rows, oids[1]) == [("conformance.models.Item",
                                                   "ann@example.com")]
    with mirrored.transaction() as conn:
        conn.root()["Bob"].__class__ = Item
        conn.root()["Bob"].email = "bob@example.com"
    assert mirrored.query_data(rows, oids[0]) == [("conformance.models.Item",
                                                   "bob@example.com")]


def test_a_search_from_an_older_snapshot_leaves_out_objects_created_since(mirrored):
    manager = transaction.TransactionManager()
    old = mirrored.open(manager)
    manager.begin()
    assert old.where("CAST(state->>'age' AS integer) > 0").total == 4
    with mirrored.transaction() as conn:
        conn.root()["Fay"] = Item("Fay", email="fay@example.com", bio="", age=22)
    found = old.where("lower(state->>'email') LIKE %s", "%@example.com")
    assert found.total == 2  # the mirror has Fay, the snapshot does not
    assert sorted(names(found)) == ["Ann", "Cid"]
    manager.abort()
    old.close()


def test_search_takes_any_query_whose_first_column_is_the_oid(mirrored):
    conn = mirrored.open()
    found = conn.search("SELECT oid FROM amphora_objects WHERE CAST(state->>'age' AS integer) < %s"
                        " ORDER BY CAST(state->>'age' AS integer) DESC", 40)
    assert names(found) == ["Bob", "Cid"]
    with pytest.raises(InvalidQueryError, match="first column must be the oid"):
        conn.search("SELECT class_name FROM amphora_objects")
    conn.close()


def test_query_data_returns_plain_rows(mirrored):
    rows = mirrored.query_data("select class_name, count(*) from amphora_objects group by 1"
                               " order by 1")
    assert ("conformance.models.Item", 4) in rows
    assert ("persistent.mapping.PersistentMapping", 1) in rows


def test_an_expression_index_is_used_and_kept(make_storage, mirrored):
    mirrored.create_index("item_email", "lower(state->>'email')",
                          class_name="conformance.models.Item")
    query = ("SELECT oid FROM amphora_objects WHERE lower(state->>'email') = %s"
             " AND class_name = 'conformance.models.Item'")
    if "sqlite" in make_storage.name:
        plan = mirrored.query_data("EXPLAIN QUERY PLAN " + query, "x")
        assert "item_email" in " ".join(str(row) for row in plan)
    else:  # PostgreSQL plans a scan of four rows whatever the indexes: check the index
        definition = mirrored.query_data(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'item_email'"
            " AND schemaname = current_schema()")
        assert "lower((state ->> 'email'" in definition[0][0]
        assert "WHERE (class_name = 'conformance.models.Item'" in definition[0][0]
    with mirrored.transaction() as conn:
        conn.root()["Gus"] = Item("Gus", email="GUS@example.com", bio="", age=60)
    assert names(mirrored.open().where("lower(state->>'email') = %s",
                                       "gus@example.com")) == ["Gus"]


def test_full_text_search_finds_and_ranks_and_follows_commits(mirrored):
    mirrored.create_text_index("item_text", ["value", "bio"])
    conn = mirrored.open()
    hits = conn.search_text("item_text", "database AND python")  # "databases" too
    assert sorted(names(hits)) == ["Ann", "Cid"] and hits.total == 2
    assert names(conn.search_text("item_text", "trumpet")) == ["Bob"]
    assert sorted(names(conn.search_text("item_text", "python"))) == ["Ann", "Cid", "Dee"]
    conn.close()
    with mirrored.transaction() as conn:
        conn.root()["Bob"].bio = "python on the trumpet"
        del conn.root()["Dee"]
    mirrored.pack()
    conn = mirrored.open()
    assert sorted(names(conn.search_text("item_text", "python"))) == ["Ann", "Bob", "Cid"]
    assert conn.search_text("item_text", "python", limit=1).total == 3
    conn.close()


def test_bad_sql_and_names_are_clear_errors_and_change_nothing(mirrored):
    conn = mirrored.open()
    with pytest.raises(InvalidQueryError, match="nonsense_column"):  # the database's words
        conn.where("nonsense_column = 1")
    with pytest.raises(InvalidQueryError):
        mirrored.query_data("DELETE FROM amphora_objects")
    with pytest.raises(InvalidQueryError, match="identifier"):
        mirrored.create_index("bad name; drop table objects", "1")
    with pytest.raises(InvalidQueryError, match="field"):
        mirrored.create_text_index("t", ["bio; drop"])
    with pytest.raises(InvalidQueryError, match="limit"):
        conn.where("1 = 1", limit=-1)
    assert conn.where("1 = 1", class_name="conformance.models.Item").total == 4
    conn.close()


def test_a_mirror_created_later_covers_existing_objects_with_progress(make_storage, storage):
    if not getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} cannot keep a JSON mirror")
    db = amphora.DB(storage)
    with db.transaction() as conn:
        for n in range(1200):
            conn.root()[f"k{n}"] = Item(n)
    calls = []
    written = db.create_mirror(progress=lambda done, total: calls.append((done, total)))
    assert written == 1201 and calls[-1] == (1201, 1201) and len(calls) >= 2
    assert db.query_data("SELECT count(*) FROM amphora_objects") == [(1201,)]
    db.drop_mirror()
    assert not db.has_mirror()
    with pytest.raises(MirrorError, match="no JSON mirror"):
        db.query_data("SELECT 1")
    db.close()


def test_placeholders_inside_quotes_are_left_alone(mirrored):
    rows = mirrored.query_data("SELECT '%s', '100%%', %s", "value")
    assert rows == [("%s", "100%%", "value")]


# -- a mirror kept by a follower ----------------------------------------------------------

@pytest.fixture
def followed(make_storage, storage):
    if not getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} cannot keep a JSON mirror")
    db = amphora.DB(storage)
    with db.transaction() as conn:
        conn.root()["Ann"] = Item("Ann", email="ann@example.com", age=41)
    assert db.create_mirror(mode="follow") == 2  # the root and Ann, written at once
    yield db
    db.close()


def emails(db) -> list[str]:
    return [row[0] for row in db.query_data(
        "SELECT state->>'email' FROM amphora_objects WHERE class_name = %s ORDER BY 1",
        "conformance.models.Item")]


def test_a_follower_writes_documents_after_the_commits(followed):
    assert followed.mirror_mode() == "follow"
    with followed.transaction() as conn:
        conn.root()["Bob"] = Item("Bob", email="bob@example.org", age=35)
        conn.root()["Ann"].email = "ann@example.net"
    assert emails(followed) == ["ann@example.com"]  # commits write no documents
    assert not followed.wait_for_mirror(timeout=0.1)
    assert followed.follow_mirror() == 1
    assert followed.wait_for_mirror(timeout=0)
    assert emails(followed) == ["ann@example.net", "bob@example.org"]
    assert followed.follow_mirror() == 0  # caught up: nothing to do


def test_a_follower_resumes_from_its_watermark_in_another_process(followed, make_storage,
                                                                  storage):
    if not make_storage.durable:
        pytest.skip(f"{make_storage.name} keeps its data in one process")
    for name in ("Cid", "Dee"):
        with followed.transaction() as conn:
            conn.root()[name] = Item(name, email=f"{name.lower()}@example.com", age=1)
    uri = make_storage.uri()
    script = ("import sys, amphora; db = amphora.open(sys.argv[1]); "
              "print(db.follow_mirror()); db.close()")
    done = subprocess.run([sys.executable, "-c", script, uri], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2"]
    assert emails(followed) == ["ann@example.com", "cid@example.com", "dee@example.com"]
    assert followed.follow_mirror() == 0


def test_pack_removes_documents_in_follow_mode_too(followed):
    with followed.transaction() as conn:
        del conn.root()["Ann"]
    followed.follow_mirror()
    assert emails(followed) == ["ann@example.com"]  # unreachable, not yet packed
    followed.pack()
    assert emails(followed) == []


def test_switching_a_follow_mirror_to_sync_covers_what_the_follower_missed(followed):
    with followed.transaction() as conn:
        conn.root()["Ann"].email = "ann@example.org"
    followed.create_mirror(mode="sync")
    assert followed.mirror_mode() == "sync" and emails(followed) == ["ann@example.org"]
    with followed.transaction() as conn:
        conn.root()["Ann"].email = "ann@example.net"
    assert emails(followed) == ["ann@example.net"]
    with pytest.raises(MirrorError, match="follow mode"):
        followed.follow_mirror()
    with pytest.raises(MirrorError, match="'sync' or 'follow'"):
        followed.create_mirror(mode="later")


def test_a_merged_conflict_leaves_the_merged_state_in_the_document(mirrored):
    """Two transactions change one BTrees.Length from the same revision: the second
    commit's record is merged (by the storage or the connection) and its document is made
    from the merged record, not from the one the transaction stored."""
    from BTrees.Length import Length
    with mirrored.transaction() as conn:
        conn.root()["count"] = Length(10)
        conn.root()["items"] = [Item(n) for n in range(300)]  # a commit big enough to
    managers = [transaction.TransactionManager() for _ in range(2)]
    conns = [mirrored.open(tm) for tm in managers]
    for conn, step, half in zip(conns, (1, 2), (slice(0, 150), slice(150, 300))):
        conn.root()["count"].change(step)
        for item in conn.root()["items"][half]:  # ... make its documents in steps
            item.value += step
    for tm in managers:
        tm.commit()
    for conn in conns:
        conn.close()
    assert mirrored.query_data("SELECT state FROM amphora_objects WHERE class_name = %s",
                               "BTrees.Length.Length") in ([("13",)], [(13,)])
    conn = mirrored.open()
    assert conn.root()["count"]() == 13
    assert [item.value for item in conn.root()["items"][149:151]] == [150, 152]
    conn.close()
