"""The SQLite storage's JSON mirror as it lies in the file: the documents are columns of
the records' rows in ``objects`` (``class_name``, ``state``, ``state_tid``), read through
the view ``amphora_objects``; the class index, the indexes made with ``create_index`` and
the triggers of the text indexes are on ``objects``; a mirror made before (a table
``amphora_objects`` of its own) moves into the columns when a writable storage opens the
file. (What searches answer, on every storage, is tests/search's.)

Records here are built by hand, of classes that do not exist, except where a database
object is needed to search (``conformance.models.Item``). Each test works on a file of its
own under pytest's tmp_path, which it also reads with a plain ``sqlite3`` connection.
"""
from __future__ import annotations

import io
import pickle
import sqlite3
import time
from pathlib import Path

import pytest
from records import ITEM, Ref, commit, commit_during, indexed_items, queries_sent

import amphora
from amphora.storage.base import TransactionMetaData
from amphora.storage.sqlite import SQLiteStorage
from amphora.utils import p64, u64, z64

THING = "no_such_module.Thing"

# -- helpers --------------------------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """A subclass: only its instances take a ``persistent_id`` attribute on Python 3.13."""


def thing(value, *refs: bytes, module: str = "no_such_module") -> bytes:
    """A record of class ``<module>.Thing`` (named as pickle names a class, which the JSON
    mapping reads) whose state is ``{"value": value}``, plus ``{"refs": [...]}`` (persistent
    references to ``refs``) when given."""
    file = io.BytesIO()
    pickler = _Pickler(file, 3)
    pickler.persistent_id = lambda obj: (obj.oid, None) if isinstance(obj, Ref) else None
    pickler.dump({"value": value, **({"refs": [Ref(oid) for oid in refs]} if refs else {})})
    return b"\x80\x03c" + module.encode() + b"\nThing\nq\x00." + file.getvalue()


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "data.db"


@pytest.fixture
def open_storage(path):
    opened = []

    def open_storage(**options) -> SQLiteStorage:
        storage = SQLiteStorage(str(path), **options)
        opened.append(storage)
        return storage
    yield open_storage
    for storage in opened:
        storage.close()


@pytest.fixture
def storage(open_storage) -> SQLiteStorage:
    return open_storage()


@pytest.fixture
def sql(path):
    """Run SQL on the file, as another client of it would (autocommit: no transaction is
    held between statements). Connects at the first statement, once the file exists."""
    conns = []

    def run(statement: str, params=()) -> list:
        if not conns:
            conns.append(sqlite3.connect(path, isolation_level=None))
        return conns[0].execute(statement, params).fetchall()
    yield run
    for conn in conns:
        conn.close()


def columns(sql, table: str) -> list[str]:
    return [name for (name,) in sql("SELECT name FROM pragma_table_info(?) ORDER BY cid",
                                    (table,))]


def kind_of(sql, name: str) -> str | None:
    found = sql("SELECT type FROM sqlite_master WHERE name = ?", (name,))
    return found[0][0] if found else None


def on_objects(sql) -> list[tuple[str, str]]:
    """The (type, name) of the indexes and triggers made on ``objects`` (not SQLite's own)."""
    return sql("SELECT type, name FROM sqlite_master WHERE tbl_name = 'objects'"
               " AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name")


def plan(sql, statement: str, params=()) -> str:
    """SQLite's query plan of ``statement`` (``%s`` placeholders) with ``params`` bound."""
    from amphora.search import placeholders
    return " | ".join(row[3] for row in sql("EXPLAIN QUERY PLAN "
                                            + placeholders(statement, "qmark"), tuple(params)))


def uses_index(sql, index: str, value: str) -> str:
    """The plan of a lookup of ``value`` through ``index`` on ``objects`` (the index made
    for ``state->>'value'`` of Things): SQLite refuses the query ("no query solution")
    unless that index can answer it."""
    query = (f"SELECT oid FROM objects INDEXED BY {index} WHERE state->>'value' = %s"
             f" AND class_name = '{THING}'")
    assert sql(query.replace("%s", "?"), (value,)) != []
    return plan(sql, query, [value])


# -- the layout -----------------------------------------------------------------------------


def test_the_mirror_is_columns_of_the_records_rows_read_through_a_view(storage, sql):
    first = commit(storage, {z64: thing("root"), p64(1): thing("one")})
    assert columns(sql, "objects") == ["oid", "tid", "data"]
    assert storage.create_mirror() == 2
    assert columns(sql, "objects") == ["oid", "tid", "data", "class_name", "state",
                                       "state_tid"]
    assert kind_of(sql, "amphora_objects") == "view"
    assert columns(sql, "amphora_objects") == ["oid", "tid", "class_name", "state"]
    assert kind_of(sql, "amphora_objects_class") == "index"
    assert sql("SELECT tbl_name, sql FROM sqlite_master WHERE name = 'amphora_objects_class'") == [
        ("objects", "CREATE INDEX amphora_objects_class ON objects (class_name)"
                    " WHERE class_name IS NOT NULL")]  # partial: rows with a document
    # the backfill wrote each document beside its record
    assert sql("SELECT oid, tid, state_tid, class_name, state ->> 'value' FROM objects"
               " ORDER BY oid") == [(0, u64(first), u64(first), THING, "root"),
                                    (1, u64(first), u64(first), THING, "one")]
    second = commit(storage, {p64(1): thing("two")}, {p64(1): first})
    assert sql("SELECT tid, state_tid, class_name, state ->> 'value' FROM objects"
               " WHERE oid = 1") == [(u64(second), u64(second), THING, "two")]
    assert sql("SELECT oid, tid, class_name, state ->> 'value' FROM amphora_objects"
               " ORDER BY oid") == [(0, u64(first), THING, "root"),
                                    (1, u64(second), THING, "two")]
    assert columns(sql, "revisions") == ["oid", "tid", "end_tid", "data"]
    assert sql("SELECT oid, tid, end_tid FROM revisions") == [(1, u64(first), u64(second))]
    with pytest.raises(sqlite3.OperationalError,
                       match="cannot modify amphora_objects because it is a view"):
        sql("DELETE FROM amphora_objects")
    assert sql("SELECT count(*) FROM objects") == [(2,)]

    storage.drop_mirror()
    assert columns(sql, "objects") == ["oid", "tid", "data"]
    assert kind_of(sql, "amphora_objects") is None
    assert kind_of(sql, "amphora_objects_class") is None
    assert on_objects(sql) == []
    assert storage.mirror_mode() is None
    third = commit(storage, {p64(1): thing("three")}, {p64(1): second})  # no documents now
    assert storage.load(p64(1)) == (thing("three"), third)
    assert sql("SELECT oid, tid FROM objects ORDER BY oid") == [(0, u64(first)),
                                                               (1, u64(third))]


def test_a_follow_mirror_shows_the_tid_of_each_documents_record(storage, sql):
    first = commit(storage, {z64: thing("root")})
    storage.create_mirror(mode="follow")
    second = commit(storage, {z64: thing("new root"), p64(1): thing("new")}, {z64: first})
    rows = "SELECT oid, tid, state ->> 'value' FROM amphora_objects ORDER BY oid"
    assert sql(rows) == [(0, u64(first), "root")]  # the commit wrote no document
    # the records are current all the same; the new object has a row without a document
    assert sql("SELECT oid, tid, state_tid, state IS NULL FROM objects ORDER BY oid") == [
        (0, u64(second), u64(first), 0), (1, u64(second), None, 1)]
    assert storage.mirror_watermark() == u64(first)
    assert storage.follow_mirror() == 1
    assert sql(rows) == [(0, u64(second), "new root"), (1, u64(second), "new")]
    assert storage.mirror_watermark() == u64(second)
    assert sql("SELECT count(*) FROM objects WHERE state_tid IS NOT tid") == [(0,)]


@pytest.mark.parametrize("keep_history", [True, False], ids=["history", "history-free"])
def test_pack_takes_documents_along_and_a_class_change_moves_the_class(open_storage, sql,
                                                                       keep_history):
    storage = open_storage(keep_history=keep_history)
    root, kept, lost = z64, p64(1), p64(2)
    t1 = commit(storage, {root: thing("root", kept), kept: thing("kept", module="other_module"),
                          lost: thing("lost")})
    storage.create_mirror()
    storage.create_text_index("thing_text", ["value"], class_name=THING)
    in_text = "SELECT rowid, f0 FROM thing_text ORDER BY rowid"
    assert sql(in_text) == [(0, "root"), (2, "lost")]
    in_view = "SELECT oid, class_name FROM amphora_objects ORDER BY oid"
    assert sql(in_view) == [(0, THING), (1, "other_module.Thing"), (2, THING)]

    # the same object, now a record of another class
    t2 = commit(storage, {kept: thing("kept")}, {kept: t1})
    assert sql(in_view) == [(0, THING), (1, THING), (2, THING)]
    assert sql("SELECT tid FROM amphora_objects WHERE oid = 1") == [(u64(t2),)]
    by_class = "SELECT oid FROM amphora_objects WHERE class_name = %s ORDER BY oid"
    assert storage.query_mirror(by_class, [THING]) == [(0,), (1,), (2,)]
    assert storage.query_mirror(by_class, ["other_module.Thing"]) == []
    assert "amphora_objects_class" in plan(sql, by_class, [THING])
    assert sql(in_text) == [(0, "root"), (1, "kept"), (2, "lost")]  # now of the class indexed
    if not keep_history:  # the replaced revision (kept for conflict resolution) is whole
        assert columns(sql, "replaced") == ["oid", "tid", "end_tid", "data"]
        assert storage.loadSerial(kept, t1) == thing("kept", module="other_module")

    time.sleep(0.01)
    storage.pack(time.time())
    with pytest.raises(amphora.errors.ObjectNotFoundError):
        storage.load(lost)
    assert sql(in_view) == [(0, THING), (1, THING)]
    assert sql("SELECT oid FROM objects ORDER BY oid") == [(0,), (1,)]
    assert storage.query_mirror(by_class, [THING]) == [(0,), (1,)]
    assert sql(in_text) == [(0, "root"), (1, "kept")]
    assert sql("PRAGMA integrity_check") == [("ok",)]  # the class index too

    # and back to the other class: out of the text index, the class index follows
    commit(storage, {kept: thing("again", module="other_module")}, {kept: t2})
    assert sql(in_view) == [(0, THING), (1, "other_module.Thing")]
    assert storage.query_mirror(by_class, ["other_module.Thing"]) == [(1,)]
    assert sql(in_text) == [(0, "root")]


def test_a_where_on_an_indexed_expression_uses_the_index(storage, sql, monkeypatch):
    db = indexed_items(storage)
    db.create_text_index("item_text", ["email"], class_name=ITEM)
    assert sql("SELECT tbl_name FROM sqlite_master WHERE name = 'item_email'") == [("objects",)]
    assert sql("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
               " ORDER BY name") == [("item_text_delete", "objects"),
                                     ("item_text_insert", "objects"),
                                     ("item_text_update", "objects")]
    sent = queries_sent(monkeypatch, storage)
    conn = db.open()
    try:
        found = conn.where("lower(state->>'email') = %s", "p7@example.com", class_name=ITEM)
        assert [item.value for item in found] == [7]
        statement, params = sent[0]
        shown = plan(sql, statement, params)
        assert "item_email" in shown, shown

        assert len(conn.where("1 = 1", class_name="persistent.mapping.PersistentMapping")) == 1
        statement, params = sent[-1]
        shown = plan(sql, statement, params)
        assert "amphora_objects_class" in shown, shown  # a partial index, for rows with a class

        # (an FTS5 query: the address as a phrase)
        assert [item.value for item in conn.search_text("item_text", '"p7@example.com"')] == [7]
        statement, params = sent[-1]
        assert "item_text" in statement
        # the text index follows a commit: the old text is gone, the new one found
        with db.transaction() as changing:
            changing.root()[7].email = "seven@example.org"
        # (at the connection's snapshot the old text still matches; a new one sees the commit)
        assert [item.value for item in conn.search_text("item_text", '"p7@example.com"')] == [7]
        conn.transaction_manager.begin()
        assert [item.value for item in conn.search_text("item_text", "seven")] == [7]
        assert len(conn.search_text("item_text", '"p7@example.com"')) == 0
        assert [item.value for item in conn.search_text("item_text", '"p8@example.com"')] == [8]
    finally:
        conn.close()
        db.close()


# -- mirrors made before --------------------------------------------------------------------
# What a mirror was before the documents moved into `objects`: a table of its own, emptied
# by a trigger on `objects` at pack (the statements of _CREATE_MIRROR in e10e2a0).
OLD_MIRROR = (
    "CREATE TABLE IF NOT EXISTS amphora_objects (oid INTEGER PRIMARY KEY,"
    " tid INTEGER NOT NULL, class_name TEXT NOT NULL, state TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS amphora_objects_class ON amphora_objects (class_name)",
    "CREATE TRIGGER IF NOT EXISTS amphora_objects_gone AFTER DELETE ON objects"
    " BEGIN DELETE FROM amphora_objects WHERE oid = old.oid; END",
    "INSERT INTO amphora_meta (key, value) VALUES ('mirror', 'sync')",
)
# what create_mirror_index made then
OLD_INDEXES = (
    "CREATE INDEX IF NOT EXISTS thing_value ON amphora_objects"
    f" ((state->>'value')) WHERE class_name = '{THING}'",
    "CREATE UNIQUE INDEX IF NOT EXISTS thing_unique ON amphora_objects ((state->>'value'))",
)


def old_text_index(name: str, fields: list[str], class_name: str | None) -> list[str]:
    """What create_text_index made then (e10e2a0): an FTS5 table, backfilled, and three
    triggers on the table amphora_objects."""
    columns = [f"f{n}" for n in range(len(fields))]
    values = ", ".join(f"new.state ->> '$.{field}'" for field in fields)
    condition = "1 = 1" if class_name is None else f"new.class_name = '{class_name}'"
    select = ", ".join(f"state ->> '$.{field}'" for field in fields)
    backfill_where = " WHERE " + ("1 = 1" if class_name is None
                                  else f"class_name = '{class_name}'")
    return [
        f"CREATE VIRTUAL TABLE {name} USING fts5({', '.join(columns)},"
        " tokenize = 'porter unicode61')",
        f"INSERT INTO {name} (rowid, {', '.join(columns)}) SELECT oid, {select}"
        f" FROM amphora_objects{backfill_where}",
        f"CREATE TRIGGER {name}_insert AFTER INSERT ON amphora_objects WHEN {condition}"
        f" BEGIN INSERT INTO {name} (rowid, {', '.join(columns)}) VALUES (new.oid, {values});"
        " END",
        f"CREATE TRIGGER {name}_update AFTER UPDATE ON amphora_objects BEGIN"
        f" DELETE FROM {name} WHERE rowid = old.oid;"
        f" INSERT INTO {name} (rowid, {', '.join(columns)}) SELECT new.oid, {values}"
        f" WHERE {condition}; END",
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON amphora_objects BEGIN"
        f" DELETE FROM {name} WHERE rowid = old.oid; END",
    ]


def make_old_mirror(path: Path, mode: str = "sync") -> tuple[bytes, bytes]:
    """A file whose mirror is in the old layout: documents of the root and of an older
    revision of object 1 (so a moved document shows which tid it keeps), a class-filtered
    expression index, a unique index and a text index. Returns the two commits' tids."""
    from amphora.jsonpickle import record_to_json
    storage = SQLiteStorage(str(path))
    try:
        first = commit(storage, {z64: thing("root"), p64(1): thing("apple pie")})
        second = commit(storage, {p64(1): thing("apple tart")}, {p64(1): first})
    finally:
        storage.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert [name for (name,) in conn.execute("SELECT name FROM pragma_table_info"
                                                 "('amphora_meta') ORDER BY cid")] == [
            "key", "value"]
        conn.execute("BEGIN")
        for statement in OLD_MIRROR:
            conn.execute(statement.replace("'sync'", repr(mode)))
        if mode == "follow":
            conn.execute("INSERT INTO amphora_meta VALUES ('mirror_watermark', ?)",
                         (u64(first),))
        for oid, tid, data in [(0, first, thing("root")), (1, first, thing("apple pie"))]:
            class_name, state = record_to_json(data)
            conn.execute("INSERT INTO amphora_objects VALUES (?, ?, ?, ?)",
                         (oid, u64(tid), class_name, state))
        for statement in (*OLD_INDEXES, *old_text_index("thing_text", ["value"], THING),
                          *old_text_index("any_text", ["value", "note"], None)):
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return first, second


def test_a_mirror_made_before_moves_into_the_records_rows_when_opened_for_writing(
        path, open_storage, sql):
    first, second = make_old_mirror(path)
    assert kind_of(sql, "amphora_objects") == "table"
    assert sql("SELECT rowid, f0 FROM thing_text ORDER BY rowid") == [
        (0, "root"), (1, "apple pie")]

    reader = open_storage(read_only=True)  # reads the old table as it is
    assert reader.mirror_mode() == "sync"
    assert reader.query_mirror("SELECT oid FROM amphora_objects WHERE state->>'value' = %s",
                               ["apple pie"]) == [(1,)]
    assert kind_of(sql, "amphora_objects") == "table"
    assert columns(sql, "objects") == ["oid", "tid", "data"]

    writer = open_storage()
    assert kind_of(sql, "amphora_objects") == "view"
    assert columns(sql, "objects") == ["oid", "tid", "data", "class_name", "state",
                                       "state_tid"]
    assert sql("SELECT oid, tid, class_name, state->>'value' FROM amphora_objects"
               " ORDER BY oid") == [(0, u64(first), THING, "root"),
                                    (1, u64(first), THING, "apple pie")]  # their tids kept
    assert sql("SELECT tid FROM objects WHERE oid = 1") == [(u64(second),)]
    assert on_objects(sql) == [
        ("index", "amphora_objects_class"), ("index", "thing_unique"),
        ("index", "thing_value"), ("trigger", "any_text_delete"),
        ("trigger", "any_text_insert"), ("trigger", "any_text_update"),
        ("trigger", "thing_text_delete"), ("trigger", "thing_text_insert"),
        ("trigger", "thing_text_update")]
    assert sql("SELECT count(*) FROM sqlite_master WHERE tbl_name = 'amphora_objects'"
               " AND type != 'view'") == [(0,)]
    assert kind_of(sql, "amphora_objects_gone") is None
    assert sql("SELECT sql FROM sqlite_master WHERE name = 'thing_value'") == [
        (f"CREATE INDEX thing_value ON objects ((state->>'value')) WHERE class_name = '{THING}'",)]
    assert kind_of(sql, "thing_text") == "table"  # the FTS5 table stays, with its rows
    assert writer.mirror_mode() == "sync"
    assert "thing_value" in uses_index(sql, "thing_value", "apple pie")
    text, params = writer.text_query("thing_text", "apple")
    assert writer.query_mirror(text, params) == [(1,)]
    # the reader, still open, reads the view now
    assert reader.query_mirror("SELECT oid, tid FROM amphora_objects WHERE state->>'value' = %s",
                               ["apple pie"]) == [(1, u64(first))]

    third = commit(writer, {p64(1): thing("pear")}, {p64(1): second})
    assert sql("SELECT tid, state->>'value' FROM amphora_objects WHERE oid = 1") == [
        (u64(third), "pear")]
    assert writer.query_mirror(text, params) == []  # the moved triggers keep it current
    text, params = writer.text_query("thing_text", "pear")
    assert writer.query_mirror(text, params) == [(1,)]
    assert writer.query_mirror(*writer.text_query("any_text", "pear")) == [(1,)]
    assert writer.query_mirror(*writer.text_query("any_text", "apple")) == []

    assert writer.rebuild_mirror() == 2
    assert sql("SELECT oid, tid FROM amphora_objects ORDER BY oid") == [
        (0, u64(first)), (1, u64(third))]
    assert writer.query_mirror(text, params) == [(1,)]

    txn = TransactionMetaData()
    writer.tpc_begin(txn)
    writer.store(p64(2), z64, thing("pear"), "", txn)
    with pytest.raises(Exception, match="thing_unique"):  # the unique index holds
        writer.tpc_vote(txn)
    writer.tpc_abort(txn)
    assert sql("SELECT count(*) FROM objects WHERE oid = 2") == [(0,)]
    fourth = commit(writer, {p64(2): thing("plum")})
    assert sql("SELECT tid, state->>'value' FROM amphora_objects WHERE oid = 2") == [
        (u64(fourth), "plum")]
    assert sql("PRAGMA integrity_check") == [("ok",)]


def test_create_mirror_moves_a_mirror_made_before(path, open_storage, sql, monkeypatch):
    """A storage open before the old mirror appeared (so not upgraded at opening) moves it
    when create_mirror runs."""
    first, second = make_old_mirror(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in ("DROP TRIGGER thing_text_insert", "DROP TRIGGER thing_text_update",
                      "DROP TRIGGER thing_text_delete", "DROP TABLE thing_text",
                      "DROP INDEX thing_unique"):
        conn.execute(statement)
    conn.close()
    monkeypatch.setattr(SQLiteStorage, "_upgrade_mirror", lambda self, conn: None)
    writer = open_storage()
    assert kind_of(sql, "amphora_objects") == "table"
    monkeypatch.undo()
    assert writer.create_mirror() == 2
    assert kind_of(sql, "amphora_objects") == "view"
    assert on_objects(sql) == [("index", "amphora_objects_class"), ("index", "thing_value"),
                               ("trigger", "any_text_delete"), ("trigger", "any_text_insert"),
                               ("trigger", "any_text_update")]
    assert writer.query_mirror(*writer.text_query("any_text", "tart")) == [(1,)]
    assert writer.query_mirror(*writer.text_query("any_text", "pie")) == []
    # the backfill then made every document current
    assert sql("SELECT oid, tid, state->>'value' FROM amphora_objects ORDER BY oid") == [
        (0, u64(first), "root"), (1, u64(second), "apple tart")]


def test_a_follow_mirror_made_before_moves_and_keeps_following(path, open_storage, sql):
    first, second = make_old_mirror(path, mode="follow")
    writer = open_storage()
    assert kind_of(sql, "amphora_objects") == "view"
    assert writer.mirror_mode() == "follow" and writer.mirror_watermark() == u64(first)
    third = commit(writer, {p64(2): thing("plum")})
    rows = "SELECT oid, tid, state->>'value' FROM amphora_objects ORDER BY oid"
    assert sql(rows) == [(0, u64(first), "root"), (1, u64(first), "apple pie")]
    assert writer.follow_mirror() == 2
    assert sql(rows) == [(0, u64(first), "root"), (1, u64(second), "apple tart"),
                         (2, u64(third), "plum")]
    assert writer.query_mirror(*writer.text_query("thing_text", "plum")) == [(2,)]
    assert writer.query_mirror(*writer.text_query("thing_text", "pie")) == []


def test_a_backfill_racing_commits_leaves_every_document_current(storage, sql):
    """The backfill and the commits write the same rows: each document ends beside the
    record it was made from."""
    commit(storage, {p64(n): thing(n) for n in range(3000)})

    def mirror() -> None:
        storage.create_mirror()
        storage.rebuild_mirror()
    errors, commits = commit_during(storage, mirror, lambda n: thing("changed"),
                                    [p64(n) for n in range(0, 3000, 7)])
    assert errors == []
    assert commits  # the race took place
    assert sql("SELECT count(*) FROM objects WHERE state IS NULL OR state_tid IS NOT tid") == [
        (0,)]
    assert sql("SELECT count(*) FROM amphora_objects WHERE state->>'value' = 'changed'") == [
        (len(range(0, 3000, 7)),)]


# -- documents of odd records ---------------------------------------------------------------


def test_records_the_mapping_cannot_read_get_placeholder_documents(storage, sql):
    storage.create_mirror()
    commit(storage, {p64(2): b"not a pickle"})
    odd = thing("odd").replace(b"cno_such_module", b"cno\x1esuch")
    quoted = thing("quoted").replace(b"cno_such_module", b"cit's")
    commit(storage, {p64(3): odd, p64(4): thing("plain"), p64(5): quoted})
    rows = sql("SELECT oid, class_name, state ->> '$.\"@unknown\"' IS NOT NULL,"
               " state ->> 'value' FROM amphora_objects ORDER BY oid")
    assert rows == [(2, "", 1, None), (3, "no\x1esuch.Thing", 0, "odd"),
                    (4, THING, 0, "plain"), (5, "it's.Thing", 0, "quoted")]
    assert sql("SELECT json_valid(state) FROM objects WHERE oid = 2") == [(1,)]
    # the placeholder's row has a class ("") for the class index, and reads back as stored
    assert storage.query_mirror("SELECT oid FROM amphora_objects WHERE class_name = %s",
                                [""]) == [(2,)]
    assert storage.load(p64(2))[0] == b"not a pickle"
    storage.create_mirror_index("quoted_value", "state->>'value'", class_name="it's.Thing")
    assert storage.query_mirror("SELECT oid FROM amphora_objects WHERE state->>'value' = %s"
                                " AND class_name = 'it''s.Thing'", ["quoted"]) == [(5,)]


# -- dropping and making again --------------------------------------------------------------


def test_a_mirror_dropped_and_made_again_is_whole(storage, sql):
    first = commit(storage, {z64: thing("root"), p64(1): thing("apple")})
    storage.create_mirror()
    storage.create_mirror_index("thing_value", "state->>'value'", class_name=THING)
    storage.create_text_index("thing_text", ["value"], class_name=THING)
    storage.drop_mirror()
    assert columns(sql, "objects") == ["oid", "tid", "data"]
    assert on_objects(sql) == []
    assert sql("SELECT name FROM sqlite_master WHERE name LIKE 'thing%'"
               " OR name LIKE 'amphora_objects%'") == []
    assert sql("SELECT key FROM amphora_meta WHERE key LIKE 'mirror%'") == []
    with pytest.raises(amphora.errors.MirrorError):
        storage.query_mirror("SELECT oid FROM amphora_objects")

    second = commit(storage, {p64(1): thing("banana")}, {p64(1): first})
    assert storage.create_mirror() == 2
    assert sql("SELECT oid, tid, state->>'value' FROM amphora_objects ORDER BY oid") == [
        (0, u64(first), "root"), (1, u64(second), "banana")]
    storage.create_mirror_index("thing_value", "state->>'value'", class_name=THING)
    storage.create_text_index("thing_text", ["value"], class_name=THING)
    query = f"SELECT oid FROM amphora_objects WHERE state->>'value' = %s AND class_name = '{THING}'"
    assert storage.query_mirror(query, ["banana"]) == [(1,)]
    assert "thing_value" in uses_index(sql, "thing_value", "banana")
    text, params = storage.text_query("thing_text", "banana")
    assert storage.query_mirror(text, params) == [(1,)]
    commit(storage, {p64(2): thing("banana split")})
    assert sorted(storage.query_mirror(text, params)) == [(1,), (2,)]
