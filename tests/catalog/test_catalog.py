"""The catalog indexes objects by class and answers queries with live objects, on every
storage (here memory and SQLite)."""
from __future__ import annotations

import datetime

import pytest
from BTrees.OOBTree import OOBTree

import amphora
from amphora.catalog import AllOf, AnyOf, Catalog, CatalogError, Contains, Eq, InRange
from catalog_model import Person, Task, declare

DAY = datetime.date(2026, 3, 1)


def day(n: int) -> datetime.date:
    return DAY + datetime.timedelta(days=n)


def add_tasks(db, *tasks: Task) -> None:
    with db.transaction() as conn:
        catalog = Catalog.open(conn)
        box = conn.root().setdefault("tasks", OOBTree())
        for task in tasks:
            box[task.title] = task
            catalog.index(task)


@pytest.fixture
def tasks(db):
    add_tasks(db,
              Task("write the report", due=day(3), tags=("work", "writing"), points=5,
                   notes="the quarterly report for the board"),
              Task("buy milk", due=day(1), tags=("home", "shopping"), points=1),
              Task("fix the bike", due=day(7), tags=("home",), points=3,
                   notes="the rear brake squeaks"),
              Task("plan the offsite", due=day(14), tags=("work",), points=8,
                   notes="a report of last year's offsite helps"),
              Task("someday", tags=("ideas",)))
    return db


def titles(found) -> list[str]:
    return [task.title for task in found]


def query(db, *conditions, **options) -> list[str]:
    with db.transaction() as conn:
        return titles(Catalog.open(conn).query(*conditions, **options))


def test_eq_on_a_field_finds_the_objects_with_that_value(tasks):
    assert query(tasks, Eq("due", day(7))) == ["fix the bike"]
    assert query(tasks, Eq("due", day(2))) == []


def test_in_range_includes_both_ends_and_may_be_open(tasks):
    assert query(tasks, InRange("due", day(1), day(7)), sort="due") == [
        "buy milk", "write the report", "fix the bike"]
    assert query(tasks, InRange("due", min=day(4)), sort="due") == [
        "fix the bike", "plan the offsite"]
    assert query(tasks, InRange("due", max=day(2)), sort="due") == ["buy milk"]


def test_any_of_on_a_field(tasks):
    assert query(tasks, AnyOf("points", [1, 8, 99]), sort="points") == [
        "buy milk", "plan the offsite"]


def test_keywords_eq_any_of_and_all_of(tasks):
    assert sorted(query(tasks, Eq("tags", "home"))) == ["buy milk", "fix the bike"]
    assert sorted(query(tasks, AnyOf("tags", ["ideas", "shopping"]))) == [
        "buy milk", "someday"]
    assert query(tasks, AllOf("tags", ["home", "shopping"])) == ["buy milk"]
    assert query(tasks, AllOf("tags", ["home", "work"])) == []


def test_text_is_ranked_by_relevance(tasks):
    # "report" twice in the first task's title and notes, once in the offsite's notes
    assert query(tasks, Contains("text", "report")) == ["write the report", "plan the offsite"]
    assert query(tasks, Contains("text", "REAR brakes OR milk")) == ["buy milk"]
    assert sorted(query(tasks, Contains("text", "rear OR milk"))) == ["buy milk", "fix the bike"]
    assert query(tasks, Contains("text", "off*")) == ["plan the offsite"]
    assert query(tasks, Contains("text", '"quarterly report"')) == ["write the report"]
    assert query(tasks, Contains("text", "report NOT board")) == ["plan the offsite"]
    assert query(tasks, Contains("text", "report"), Contains("text", "board")) == [
        "write the report"]


def test_conditions_combine_and_sort_and_limit_apply(tasks):
    assert query(tasks, Eq("tags", "work"), InRange("due", day(0), day(10))) == [
        "write the report"]
    assert query(tasks, Contains("text", "report"), Eq("tags", "work"), sort="due",
                 reverse=True) == ["plan the offsite", "write the report"]
    assert query(tasks, InRange("points", 1, 10), sort="points", limit=2) == [
        "buy milk", "fix the bike"]
    assert query(tasks, InRange("points", 1, 10), sort="points", reverse=True, limit=1) == [
        "plan the offsite"]
    assert query(tasks, sort="due", limit=3) == ["buy milk", "write the report", "fix the bike"]
    assert query(tasks, Eq("tags", "home"), sort="due", reverse=True, limit=1) == ["fix the bike"]
    assert query(tasks, Eq("tags", "home"), AnyOf("due", [day(1), day(3), day(7)]),
                 sort="due", limit=5) == ["buy milk", "fix the bike"]
    assert query(tasks, InRange("due", day(2)), InRange("due", max=day(10)), sort="due",
                 limit=5) == ["write the report", "fix the bike"]


def test_results_are_the_live_objects_of_the_connection(tasks):
    with tasks.transaction() as conn:
        [found] = Catalog.open(conn).query(Eq("due", day(1)))
        assert found is conn.root()["tasks"]["buy milk"]
        found.points = 2
    with tasks.transaction() as conn:
        assert conn.root()["tasks"]["buy milk"].points == 2


def test_an_object_without_a_value_is_left_out_of_that_index(tasks):
    assert "someday" not in query(tasks, sort="due")
    assert query(tasks, Eq("tags", "ideas")) == ["someday"]


def test_reindexing_by_hand_follows_a_change(tasks):
    with tasks.transaction() as conn:
        task = conn.root()["tasks"]["buy milk"]
        task.due, task.tags = day(20), ("errands",)
        task.notes = "oat milk this time"
        Catalog.open(conn).index(task)
    assert query(tasks, Eq("due", day(1))) == []
    assert query(tasks, InRange("due", day(15)), sort="due") == ["buy milk"]
    assert query(tasks, Eq("tags", "home")) == ["fix the bike"]
    assert query(tasks, Eq("tags", "errands")) == ["buy milk"]
    assert query(tasks, Contains("text", "oat")) == ["buy milk"]


def test_unindexing_removes_an_object_from_every_index(tasks):
    with tasks.transaction() as conn:
        task = conn.root()["tasks"].pop("fix the bike")
        Catalog.open(conn).unindex(task)
    assert query(tasks, Eq("tags", "home")) == ["buy milk"]
    assert query(tasks, Contains("text", "brake")) == []
    assert query(tasks, sort="due") == ["buy milk", "write the report", "plan the offsite"]


def test_an_object_removed_by_a_pack_is_skipped_by_queries(tmp_path):
    """An object nothing refers to stays in the catalog until a pack removes it; then
    queries skip it (a database opened before the pack may still hold it in its caches,
    as it holds any object it loaded)."""
    uri = f"sqlite:///{tmp_path}/packed.db"
    db = amphora.open(uri)
    with db.transaction() as conn:
        declare(Catalog.open(conn))
    add_tasks(db, Task("buy milk", tags=("shopping",), points=1),
              Task("fix the bike", tags=("home",), points=3),
              Task("write the report", tags=("work",), points=5))
    with db.transaction() as conn:
        del conn.root()["tasks"]["buy milk"]  # unreachable, still in the catalog
    assert query(db, Eq("tags", "shopping")) == ["buy milk"]
    db.pack()
    db.close()
    db = amphora.open(uri)
    assert query(db, Eq("tags", "shopping")) == []
    assert query(db, InRange("points", 0, 5), sort="points", limit=2) == [
        "fix the bike", "write the report"]
    db.close()


def test_a_catalog_survives_reopening_the_database(tmp_path):
    uri = f"sqlite:///{tmp_path}/reopened.db"
    db = amphora.open(uri)
    with db.transaction() as conn:
        catalog = Catalog.open(conn)
        catalog.add_field("due", class_=Task, attribute="due")
        conn.root.task = task = Task("persist", due=day(5))
        catalog.index(task)
    db.close()
    db = amphora.open(uri)
    assert query(db, Eq("due", day(5))) == ["persist"]
    db.close()


def test_declaring_an_index_again_is_a_no_op_and_differently_an_error(db):
    with db.transaction() as conn:
        catalog = Catalog.open(conn)
        catalog.add_field("due", class_=Task, attribute="due")
        with pytest.raises(CatalogError, match="already has an index named 'due'"):
            catalog.add_keyword("due", class_=Task, attribute="due")
        with pytest.raises(CatalogError, match="must be a class"):
            catalog.add_field("when", class_="Task", attribute="due")
        assert sorted(catalog.indexes()) == ["due", "points", "tags", "text"]


def test_bad_queries_name_what_is_wrong_and_change_nothing(tasks):
    with tasks.transaction() as conn:
        catalog = Catalog.open(conn)
        with pytest.raises(CatalogError, match="no index named 'colour'.*due, points"):
            catalog.query(Eq("colour", "red"))
        with pytest.raises(CatalogError, match="InRange cannot query the keyword index 'tags'"):
            catalog.query(InRange("tags", "a", "b"))
        with pytest.raises(CatalogError, match="cannot sort by the text index 'text'"):
            catalog.query(Eq("tags", "home"), sort="text")
        with pytest.raises(CatalogError, match="limit must be a positive integer"):
            catalog.query(Eq("tags", "home"), limit=0)
        with pytest.raises(CatalogError, match="needs a condition"):
            catalog.query()
        with pytest.raises(CatalogError, match="the values 'home', 1 cannot be ordered together"):
            catalog.query(AnyOf("tags", ["home", 1]))
        with pytest.raises(CatalogError, match="malformed"):
            catalog.query(Contains("text", "report AND"))
        with pytest.raises(CatalogError, match="no index of the catalog covers Person"):
            catalog.index(Person("ann"))
    assert issubclass(CatalogError, amphora.AmphoraError) and issubclass(CatalogError, ValueError)
    assert query(tasks, Eq("tags", "home"), sort="due") == ["buy milk", "fix the bike"]


def test_a_value_the_index_cannot_order_is_refused_and_nothing_is_stored(tasks):
    with pytest.raises(CatalogError, match=r"cannot index <Task 'soon'> in 'due': its due \('tomorrow'\)"):
        with tasks.transaction() as conn:
            conn.root()["tasks"]["soon"] = task = Task("soon", due="tomorrow")
            Catalog.open(conn).index(task)
    with pytest.raises(CatalogError, match=r"in 'tags': its tags \(7\)"):
        with tasks.transaction() as conn:
            conn.root()["tasks"]["seven"] = task = Task("seven", tags=7)
            Catalog.open(conn).index(task)
    with tasks.transaction() as conn:
        assert sorted(conn.root()["tasks"]) == [
            "buy milk", "fix the bike", "plan the offsite", "someday", "write the report"]
    assert query(tasks, sort="due", limit=1) == ["buy milk"]


def test_a_catalog_elsewhere_than_the_root_is_refused_if_not_stored(db):
    catalog = Catalog()
    catalog.add_field("due", class_=Task, attribute="due")
    with pytest.raises(CatalogError, match="not stored in a database"):
        catalog.query(Eq("due", day(1)))
    with pytest.raises(CatalogError, match="store the catalog in the database"):
        catalog.index(Task("loose", due=day(1)))


def test_the_public_names_are_exported():
    import amphora.catalog
    assert sorted(amphora.catalog.__all__) == [
        "AllOf", "AnyOf", "Catalog", "CatalogError", "CatalogIndex", "Condition", "Contains",
        "Eq", "FieldIndexed", "InRange", "KeywordIndexed", "TextIndexed", "index_on_commit"]
    for name in amphora.catalog.__all__:
        assert getattr(amphora.catalog, name) is not None
