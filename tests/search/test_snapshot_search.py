"""A search answers from the connection's snapshot: exactly the objects whose documents
matched at the snapshot, whatever was committed since (on every storage that keeps a
mirror: SQLite and PostgreSQL, history-preserving and history-free)."""
from __future__ import annotations

import pytest
import transaction

import amphora
from amphora.utils import p64, u64

from conformance.models import Item

pytestmark = pytest.mark.timeout(60)

COM = "%@example.com"
BY_EMAIL = "state->>'email' LIKE %s"


@pytest.fixture
def people(make_storage, storage):
    """Ann and Cid have .com addresses, Bob .org; "python" is in Ann's and Cid's bios."""
    if not getattr(storage, "supports_mirror", False):
        pytest.skip(f"{make_storage.name} cannot keep a JSON mirror")
    db = amphora.DB(storage)
    with db.transaction() as conn:
        root = conn.root()
        root["Ann"] = Item("Ann", email="ann@example.com", bio="writes python")
        root["Bob"] = Item("Bob", email="bob@example.org", bio="plays the trumpet")
        root["Cid"] = Item("Cid", email="cid@example.com", bio="python teacher")
    db.create_mirror()
    db.create_text_index("item_text", ["bio"], class_name="conformance.models.Item")
    yield db
    db.close()


def names(objects) -> list[str]:
    return sorted(obj.value for obj in objects)


def change_after(db) -> None:
    """Ann stops matching (.org, no python), Bob starts (.com, python), Fay is new and
    matches: all after the reader's snapshot."""
    with db.transaction() as conn:
        root = conn.root()
        root["Ann"].email, root["Ann"].bio = "ann@example.org", "plays golf"
        root["Bob"].email, root["Bob"].bio = "bob@example.com", "python and trumpet"
        root["Fay"] = Item("Fay", email="fay@example.com", bio="python")


def answers(conn) -> dict[str, tuple[list[str], int]]:
    where = conn.where(BY_EMAIL, COM)
    search = conn.search(f"SELECT oid FROM amphora_objects WHERE {BY_EMAIL}", COM)
    text = conn.search_text("item_text", "python")
    return {"where": (names(where), where.total), "search": (names(search), search.total),
            "text": (names(text), text.total)}


def test_a_search_answers_at_the_snapshot_until_a_new_transaction(make_storage, people):
    make_storage.require("history")
    manager = transaction.TransactionManager()
    reader = people.open(manager)
    manager.begin()
    reader.root()  # the snapshot is the reader's from here on
    change_after(people)
    snapshot = (["Ann", "Cid"], 2)
    assert answers(reader) == {"where": snapshot, "search": snapshot, "text": snapshot}
    # the objects returned are the connection's, as its snapshot has them
    assert reader.where(BY_EMAIL, COM)[0].email == "ann@example.com"
    manager.begin()
    now = (["Bob", "Cid", "Fay"], 3)
    assert answers(reader) == {"where": now, "search": now, "text": now}
    manager.abort()
    reader.close()


def test_paging_and_totals_at_the_snapshot(make_storage, people):
    make_storage.require("history")
    manager = transaction.TransactionManager()
    reader = people.open(manager)
    manager.begin()
    change_after(people)
    page = reader.where(BY_EMAIL, COM, order_by="oid DESC", limit=1, offset=1)
    assert [obj.value for obj in page] == ["Ann"] and page.total == 2
    assert reader.where(BY_EMAIL, COM, limit=1, offset=5).total == 2
    text = reader.search_text("item_text", "python", limit=1)
    assert len(text) == 1 and text.total == 2
    manager.abort()
    reader.close()


def test_history_free_storages_leave_out_objects_replaced_since(make_storage, people):
    """A history-free storage keeps no revision of the snapshot for an object replaced
    since (the connection could not load it either): such objects are left out."""
    if people.storage.supports_history:
        pytest.skip(f"{make_storage.name} keeps history: see the test above")
    manager = transaction.TransactionManager()
    reader = people.open(manager)
    manager.begin()
    change_after(people)
    untouched = (["Cid"], 1)  # Ann was replaced; Bob and Fay did not match then
    assert answers(reader) == {"where": untouched, "search": untouched, "text": untouched}
    manager.begin()
    assert answers(reader)["where"] == (["Bob", "Cid", "Fay"], 3)
    manager.abort()
    reader.close()


def test_a_historical_connection_searches_as_of_its_moment(make_storage, people):
    make_storage.require("history")
    moment = people.storage.lastTransaction()
    change_after(people)
    old = people.open(at=moment)
    try:
        assert answers(old)["where"] == (["Ann", "Cid"], 2)
        assert answers(old)["text"] == (["Ann", "Cid"], 2)
    finally:
        old.close()


def test_query_mirror_at_a_tid_reads_the_documents_of_then(make_storage, people):
    make_storage.require("history")
    storage = people.storage
    before = p64(u64(storage.lastTransaction()) + 1)
    change_after(people)
    sql = ("SELECT state->>'email', tid FROM amphora_objects WHERE class_name = %s"
           " ORDER BY 1")
    then = storage.query_mirror(sql, ["conformance.models.Item"], before=before)
    assert [email for email, _ in then] == ["ann@example.com", "bob@example.org",
                                            "cid@example.com"]
    assert all(tid < u64(before) for _, tid in then)  # the revisions shown
    latest = storage.query_mirror(sql, ["conformance.models.Item"])
    assert [email for email, _ in latest] == ["ann@example.org", "bob@example.com",
                                              "cid@example.com", "fay@example.com"]
    with pytest.raises(amphora.InvalidQueryError, match="8-byte tid"):
        storage.query_mirror(sql, ["x"], before=b"short")


# -- a mirror kept by a follower ----------------------------------------------------------

def test_follow_mode_answers_as_of_the_watermark_for_commits_the_follower_missed(
        make_storage, people):
    """With a follow mirror a search answers at the snapshot for every object the
    follower has reached; objects changed by commits between the watermark and the
    snapshot match by their documents at the watermark."""
    make_storage.require("history")
    people.create_mirror(mode="follow")
    with people.transaction() as conn:  # before the snapshot, not followed yet
        conn.root()["Cid"].email = "cid@example.org"
    manager = transaction.TransactionManager()
    reader = people.open(manager)
    manager.begin()
    change_after(people)  # after the snapshot
    # Ann: as of the snapshot; Cid: as of the watermark (its .com address)
    assert names(reader.where(BY_EMAIL, COM)) == ["Ann", "Cid"]
    # the object comes as the snapshot has it
    assert {obj.value: obj.email for obj in reader.where(BY_EMAIL, COM)}["Cid"] == \
        "cid@example.org"
    people.follow_mirror()
    assert names(reader.where(BY_EMAIL, COM)) == ["Ann"]  # exact: the follower reached it
    manager.begin()
    assert names(reader.where(BY_EMAIL, COM)) == ["Bob", "Fay"]
    manager.abort()
    reader.close()
