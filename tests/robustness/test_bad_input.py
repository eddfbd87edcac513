"""Bad input: files that are not amphora stores, damaged files, wrong URIs, data that
cannot be stored. Each raises a clear amphora error and leaves the data intact."""
from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import transaction

sys.path.insert(0, str(Path(__file__).resolve().parent))

import amphora  # noqa: E402
from amphora.utils import oid_repr, u64, z64  # noqa: E402
from robustness_support import Item, run, sqlite_uri  # noqa: E402


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sidecars(path: Path) -> list[Path]:
    """The -wal/-shm/-journal files SQLite may leave next to ``path``."""
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"))
            if p.exists()]


def make_db(path: Path, **objects) -> dict[str, bytes]:
    """An amphora file with ``root[name] = Item(value)``; returns the oids by name."""
    db = amphora.open(sqlite_uri(path))
    try:
        with db.transaction() as conn:
            root = conn.root()
            for name, value in objects.items():
                root[name] = Item(value)
        with db.transaction() as conn:
            oids = {name: conn.root()[name]._p_oid for name in objects}
    finally:
        db.close()
    return oids


def checkpoint(path: Path) -> None:
    """Move everything from the WAL into the main file (for byte-level surgery)."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def read_all(path: Path) -> dict:
    db = amphora.open(sqlite_uri(path))
    try:
        with db.transaction() as conn:
            return {name: obj.value for name, obj in conn.root().items()}
    finally:
        db.close()


def assert_names(exc: BaseException, *needles: str) -> None:
    message = str(exc)
    assert any(n.lower() in message.lower() for n in needles), (
        f"the message {message!r} ({type(exc).__name__}) names none of {needles}")


def assert_unopenable(path: Path, error=amphora.StorageFormatError, *needles: str) -> None:
    """Opening ``path`` raises ``error`` naming the file, and changes no byte of it."""
    before = sha256(path)
    others = set(os.listdir(path.parent))
    for opener in (amphora.open, amphora.open_storage):
        with pytest.raises(error) as info:
            opener(sqlite_uri(path))
        assert isinstance(info.value, amphora.AmphoraError)
        assert_names(info.value, str(path), path.name, *needles)
    gc.collect()
    assert sha256(path) == before, "opening the file changed its bytes"
    # SQLite's read-only access to a WAL-mode file may leave its (empty) -wal and -shm
    # files behind; nothing else may appear, and nothing may be written to the log
    new = set(os.listdir(path.parent)) - others
    assert new <= {f"{path.name}-wal", f"{path.name}-shm"}, f"opening left files {new}"
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "opening wrote to the file's log"


# ---------------------------------------------------------------------------------------
# Files that are not amphora stores

@pytest.mark.timeout(60)
def test_random_bytes_file(tmp_path):
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(8192))
    assert_unopenable(path)


@pytest.mark.timeout(60)
def test_text_file(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("These are my notes.\nNot a database at all.\n" * 50)
    assert_unopenable(path)


@pytest.mark.timeout(60)
def test_empty_file_is_not_silently_reused(tmp_path):
    """A zero-byte file is what SQLite would happily turn into a database; whether amphora
    initializes it or refuses, it must not fail with a raw sqlite3 error."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    try:
        db = amphora.open(sqlite_uri(path))
    except amphora.AmphoraError as exc:
        assert_names(exc, str(path), path.name)
    else:
        try:
            with db.transaction() as conn:
                conn.root()["x"] = Item(1)
        finally:
            db.close()
        assert read_all(path) == {"x": 1}


@pytest.mark.timeout(60)
def test_sqlite_file_of_another_application(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)")
    con.executemany("INSERT INTO foo (name) VALUES (?)", [("a",), ("b",)])
    con.commit()
    con.close()
    assert_unopenable(path)
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM foo ORDER BY id").fetchall() == [("a",), ("b",)]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete", \
        "the other application's file was switched to WAL mode"
    con.close()


@pytest.mark.timeout(60)
def test_sqlite_file_of_another_application_in_wal_mode(tmp_path):
    path = tmp_path / "other-wal.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE objects (zoid INTEGER, tid INTEGER, state BLOB)")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    for p in sidecars(path):
        p.unlink()
    assert_unopenable(path)


@pytest.mark.timeout(60)
def test_directory_instead_of_file(tmp_path):
    path = tmp_path / "adir.db"
    path.mkdir()
    with pytest.raises(amphora.AmphoraError) as info:
        amphora.open(sqlite_uri(path))
    assert_names(info.value, str(path), path.name)
    assert path.is_dir() and not list(path.iterdir())


@pytest.mark.timeout(60)
def test_missing_directory(tmp_path):
    """A file in a directory that does not exist: a clear error naming it (or, if
    amphora chooses to create the directories, a working database) - never a raw
    sqlite3 error."""
    path = tmp_path / "no" / "such" / "dir" / "x.db"
    try:
        db = amphora.open(sqlite_uri(path))
    except amphora.AmphoraError as exc:
        assert_names(exc, str(path), "no such", "directory")
    else:
        db.close()
        assert path.exists()


# ---------------------------------------------------------------------------------------
# Damaged or foreign amphora files

def _set_meta(path: Path, key: str, value) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("UPDATE amphora_meta SET value = ? WHERE key = ?", (value, key))
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


@pytest.mark.timeout(60)
def test_newer_schema_version(tmp_path):
    path = tmp_path / "future.db"
    make_db(path, a=1)
    _set_meta(path, "schema_version", 999)
    assert_unopenable(path, amphora.StorageFormatError, "schema", "999")
    # set back by hand, the data is all there
    _set_meta(path, "schema_version", 1)
    assert read_all(path) == {"a": 1}


@pytest.mark.timeout(60)
def test_other_format_marker(tmp_path):
    path = tmp_path / "format.db"
    make_db(path, a=1)
    _set_meta(path, "format", "someone-else")
    assert_unopenable(path, amphora.StorageFormatError, "format")


@pytest.mark.timeout(60)
def test_amphora_file_missing_a_table(tmp_path):
    path = tmp_path / "notable.db"
    make_db(path, a=1)
    con = sqlite3.connect(path)
    con.execute("DROP TABLE transactions")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert_unopenable(path, amphora.StorageError, "transactions")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep", ["half", "one_page", "header"])
def test_truncated_file(tmp_path, keep):
    """A truncated file is refused as a whole; no read returns garbage."""
    path = tmp_path / "cut.db"
    make_db(path, **{f"k{i}": i for i in range(300)})
    db = amphora.open(sqlite_uri(path))
    try:  # make the file span many pages
        with db.transaction() as conn:
            conn.root()["big"] = Item(os.urandom(200_000))
    finally:
        db.close()
    checkpoint(path)
    for extra in sidecars(path):
        assert extra.stat().st_size == 0
        extra.unlink()
    data = path.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    cut = {"half": len(data) // 2, "one_page": page_size + 10, "header": 50}[keep]
    path.write_bytes(data[:cut])
    assert_unopenable(path, amphora.StorageFormatError, "truncated", "damaged", "malformed")


@pytest.mark.timeout(120)
def test_truncated_file_never_reads_garbage(tmp_path):
    """Even when amphora opens a damaged file (here: cut at every page boundary, with the
    header's page count made to agree, so the size check cannot see it), each read
    returns the right value or raises an amphora error - never a raw sqlite3 error,
    never wrong data."""
    original = tmp_path / "whole.db"
    expected = {f"k{i}": i for i in range(300)}
    make_db(original, **expected)
    checkpoint(original)
    whole = original.read_bytes()
    page_size = int.from_bytes(whole[16:18], "big")
    pages = len(whole) // page_size
    opened = 0
    for keep in range(1, pages):
        path = tmp_path / f"cut{keep}.db"
        data = bytearray(whole[:keep * page_size])
        data[28:32] = keep.to_bytes(4, "big")
        path.write_bytes(bytes(data))
        before = sha256(path)
        try:
            db = amphora.open(sqlite_uri(path))
        except amphora.AmphoraError as exc:
            assert_names(exc, str(path))
            assert sha256(path) == before
            continue
        opened += 1
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            try:
                names = list(conn.root().keys())
            except amphora.AmphoraError:
                continue
            for name in names:
                tm.begin()
                try:
                    value = conn.root()[name].value
                except amphora.AmphoraError:
                    pass
                else:
                    assert value == expected[name], f"garbage read for {name}: {value!r}"
                tm.abort()
        finally:
            db.close()
        assert sha256(path) == before, f"reading the damaged file (cut at page {keep}) wrote to it"
    print(f"{pages - 1} truncations, {opened} opened")


def _current_record(path: Path, oid: bytes) -> bytes:
    con = sqlite3.connect(path)
    try:
        key = int.from_bytes(oid, "big", signed=True)
        return con.execute("SELECT data FROM objects WHERE oid = ?", (key,)).fetchone()[0]
    finally:
        con.close()


def _overwrite_record(path: Path, oid: bytes, data) -> None:
    con = sqlite3.connect(path)
    try:
        key = int.from_bytes(oid, "big", signed=True)
        assert con.execute("UPDATE objects SET data = ? WHERE oid = ?", (data, key)).rowcount == 1
        con.commit()
    finally:
        con.close()


GARBAGE = {
    "random": lambda good: bytes(random_bytes(200)),
    "empty": lambda good: b"",
    "first_half": lambda good: good[:len(good) // 2],
    "class_only": lambda good: good[:good.index(b".") + 1],
    "wrong_shape": lambda good: __import__("pickle").dumps(42, 3) * 2,
    # the class part names a class that cannot be imported; the state ({'value': 2}) is fine
    "unknown_class": lambda good: b"cnosuchmodule_xyz\nKlass\nq\x00."
                                  b"}q\x01X\x05\x00\x00\x00valueq\x02K\x02s.",
    "flipped_tail": lambda good: good[:-6] + bytes(b ^ 0xA5 for b in good[-6:]),
    "text_value": lambda good: "not a record",
    "integer_value": lambda good: 12345,
}

STATE_INTACT = {"unknown_class"}


def random_bytes(n: int) -> bytes:
    import random
    return random.Random(4).randbytes(n)


def _oid_named(exc: BaseException, oid: bytes) -> bool:
    text = str(exc)
    return any(form in text for form in (oid_repr(oid), oid.hex(), repr(oid), str(u64(oid))))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(GARBAGE))
def test_corrupt_record(tmp_path, kind):
    """One record overwritten with garbage: loading that object raises an amphora error
    (CorruptRecordError) naming its oid, in both load paths (through a reference and by
    ``conn.get(oid)``), while every other object still loads, and the connection and
    database stay usable."""
    path = tmp_path / "corrupt.db"
    oids = make_db(path, a=1, b=2, c=3)
    bad_oid = oids["b"]
    _overwrite_record(path, bad_oid, GARBAGE[kind](_current_record(path, bad_oid)))
    db = amphora.open(sqlite_uri(path))
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        # through a reference: the ghost's class is known, its state is garbage
        tm.begin()
        root = conn.root()
        assert root["a"].value == 1
        if kind in STATE_INTACT:
            # through a reference the class comes from the reference: the state loads
            assert root["b"].value == 2
        else:
            with pytest.raises(amphora.AmphoraError) as info:
                root["b"].value
            assert _oid_named(info.value, bad_oid), \
                f"the error does not name oid {oid_repr(bad_oid)}: {info.value!r}"
        assert root["c"].value == 3
        tm.abort()
        # by oid, in a fresh connection (the class itself comes from the record)
        tm2 = transaction.TransactionManager()
        conn2 = db.open(tm2)
        tm2.begin()
        if kind in STATE_INTACT:
            # a class that cannot be imported is not corruption: a broken object, as in ZODB
            found = conn2.get(bad_oid)
            assert isinstance(found, amphora.Broken)
            assert found.__Broken_state__ == {"value": 2}
        else:
            with pytest.raises(amphora.AmphoraError) as info:
                conn2.get(bad_oid).value
            assert _oid_named(info.value, bad_oid), \
                f"the error does not name oid {oid_repr(bad_oid)}: {info.value!r}"
        assert conn2.get(oids["c"]).value == 3
        tm2.abort()
        conn2.close()
        # the database still takes commits, including one that replaces the bad object
        tm.begin()
        conn.root()["a"].value = 10
        conn.root()["b"] = Item(20)
        tm.commit()
        conn.close()
    finally:
        db.close()
    assert read_all(path) == {"a": 10, "b": 20, "c": 3}


# ---------------------------------------------------------------------------------------
# Wrong URIs

@pytest.mark.timeout(60)
@pytest.mark.parametrize("uri, needles", [
    ("nosuch://x", ("nosuch",)),
    ("sqlite://", ("path",)),
    ("sqlite:///x.db?bogus_option=1", ("bogus_option",)),
    ("sqlite:///x.db?synchronous=sometimes", ("synchronous", "sometimes")),
    ("sqlite:///x.db?synchronous=1", ("synchronous",)),
    ("sqlite:///x.db?busy_timeout=soon", ("busy_timeout", "soon")),
    ("sqlite:///x.db?keep_history=maybe", ("keep_history", "maybe")),
    ("sqlite:///x.db?read_only=maybe", ("read_only", "maybe")),
    ("amphora://127.0.0.1:9?server_sync=maybe", ("server_sync", "maybe")),
    ("sqlite:x.db", ("sqlite:x.db",)),
    ("", ("uri",)),
    (None, ("None", "uri", "str")),
    (42, ("42", "uri", "str")),
    (b"sqlite:///x.db", ("uri", "str", "bytes")),
    (Path("x.db"), ("x.db", "uri", "str")),
])
def test_invalid_uri(tmp_path, monkeypatch, uri, needles):
    monkeypatch.chdir(tmp_path)
    for opener in (amphora.open, amphora.open_storage):
        with pytest.raises(amphora.InvalidURIError) as info:
            opener(uri)
        assert_names(info.value, *needles)
    assert os.listdir(tmp_path) == [], "a bad URI created files"


@pytest.mark.timeout(60)
def test_unknown_keyword_option(tmp_path):
    path = tmp_path / "kw.db"
    with pytest.raises(amphora.InvalidURIError) as info:
        amphora.open(sqlite_uri(path), bogus_option=1)
    assert_names(info.value, "bogus_option")
    assert not path.exists()


@pytest.mark.timeout(60)
def test_query_string_values_keep_the_type_their_option_takes(tmp_path):
    """Strings stay strings; only options declared as booleans or numbers are converted."""
    storage = amphora.open_storage(sqlite_uri(tmp_path / "off.db") + "?synchronous=off"
                                   "&busy_timeout=2.5&keep_history=no")
    try:
        assert storage._synchronous == "off"  # was refused as False
        assert storage.supports_history is False
    finally:
        storage.close()
    with pytest.raises(amphora.InvalidURIError) as info:
        amphora.open_storage(sqlite_uri(tmp_path / "t.db") + "?busy_timeout=soon")
    assert_names(info.value, "busy_timeout", "soon")
    assert not (tmp_path / "t.db").exists()


@pytest.mark.timeout(60)
def test_a_password_of_digits_stays_a_string(tmp_path):
    from psycopg.conninfo import conninfo_to_dict
    import pgserver
    storage = amphora.open_storage(pgserver.schema_uri(tmp_path / "pw", password="007"))
    try:
        assert conninfo_to_dict(storage.dsn)["password"] == "007"  # was 7
    finally:
        storage.close()


@pytest.mark.timeout(60)
def test_database_options_in_the_query_string(tmp_path):
    db = amphora.open("memory://?cache_size=123&pool_size=2&record_cache_bytes=4096")
    try:
        assert (db.cache_size, db.pool_size) == (123, 2)
    finally:
        db.close()
    with pytest.raises(amphora.InvalidURIError) as info:
        amphora.open("memory://?cache_size=lots")
    assert_names(info.value, "cache_size", "lots")
    with pytest.raises(amphora.InvalidURIError) as info:
        amphora.open_storage("memory://?cache_size=5")
    assert_names(info.value, "cache_size", "amphora.open")
    with pytest.raises(amphora.InvalidURIError) as info:
        amphora.open("memory://?colour=blue")
    assert_names(info.value, "colour", "cache_size", "pool_size")


# ---------------------------------------------------------------------------------------
# Read-only opens

@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["keyword", "query"])
def test_read_only_open_of_missing_file(tmp_path, how):
    path = tmp_path / "missing.db"
    uri = sqlite_uri(path)
    with pytest.raises(amphora.AmphoraError) as info:
        if how == "keyword":
            amphora.open(uri, read_only=True)
        else:
            amphora.open(uri + "?read_only=true")
    assert_names(info.value, str(path), path.name)
    assert os.listdir(tmp_path) == [], "a read-only open created files"


@pytest.mark.timeout(60)
def test_read_only_open_refuses_writes_and_changes_nothing(tmp_path):
    path = tmp_path / "ro.db"
    make_db(path, a=1)
    checkpoint(path)
    before = sha256(path)
    db = amphora.open(sqlite_uri(path), read_only=True)
    try:
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        tm.begin()
        assert conn.root()["a"].value == 1
        conn.root()["a"].value = 2
        with pytest.raises(amphora.ReadOnlyError):
            tm.commit()
        tm.abort()
        conn.close()
    finally:
        db.close()
    assert sha256(path) == before
    assert read_all(path) == {"a": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_an_empty_database_opened_read_only_has_an_empty_root(tmp_path, kind):
    if kind == "memory":
        uri = "memory://?read_only=true"
    else:
        path = tmp_path / "empty.db"
        amphora.open_storage(sqlite_uri(path)).close()  # made, nothing committed
        uri = sqlite_uri(path) + "?read_only=true"
    db = amphora.open(uri)
    try:
        with db.transaction() as conn:  # was: "no object with oid 0x0"
            assert dict(conn.root()) == {} and "x" not in conn.root()
        conn = db.open(transaction.TransactionManager())
        conn.root()["x"] = 1
        with pytest.raises(amphora.ReadOnlyError):
            conn.transaction_manager.commit()
        conn.transaction_manager.abort()
        conn.close()
    finally:
        db.close()


# ---------------------------------------------------------------------------------------
# Data that cannot be stored

@pytest.mark.timeout(60)
@pytest.mark.parametrize("data", ["a string", None, bytearray(b"xx"), memoryview(b"xx"), 42])
def test_store_non_bytes(tmp_path, data):
    path = tmp_path / "store.db"
    make_db(path, a=1)
    storage = amphora.open_storage(sqlite_uri(path))
    try:
        last = storage.lastTransaction()
        meta = amphora.TransactionMetaData(description="bad store")
        storage.tpc_begin(meta)
        try:
            with pytest.raises((TypeError, amphora.AmphoraError)) as info:
                storage.store(storage.new_oid(), z64, data, "", meta)
                storage.tpc_vote(meta)
                storage.tpc_finish(meta)
            assert_names(info.value, "bytes")
        finally:
            storage.tpc_abort(meta)
        assert storage.lastTransaction() == last
        # the storage still commits
        meta = amphora.TransactionMetaData(description="good store")
        storage.tpc_begin(meta)
        root_data, serial = storage.load(z64)
        storage.store(z64, serial, root_data, "", meta)
        storage.tpc_vote(meta)
        storage.tpc_finish(meta)
        assert storage.lastTransaction() > last
    finally:
        storage.close()
    assert read_all(path) == {"a": 1}


class Unpicklable(Item):
    pass


def _lambda_attribute(tmp_path):
    obj = Unpicklable(1)
    obj.callback = lambda: None
    return obj


def _open_file_attribute(tmp_path):
    obj = Unpicklable(1)
    obj.handle = open(tmp_path / "handle.txt", "w")
    return obj


def _nested_local_class(tmp_path):
    class Local:
        pass
    obj = Unpicklable(1)
    obj.nested = {"deep": [Local()]}
    return obj


@pytest.mark.timeout(120)
@pytest.mark.parametrize("make_bad", [_lambda_attribute, _open_file_attribute,
                                      _nested_local_class])
def test_commit_of_unpicklable_object(tmp_path, make_bad):
    """The commit fails with a clear error, nothing is written (no half transaction: the
    other objects changed in the same transaction are not stored either), the storage's
    write lock is released (another process can commit), and the next commit works."""
    path = tmp_path / "pickle.db"
    uri = sqlite_uri(path)
    make_db(path, a=1, b=1)
    db = amphora.open(uri)
    try:
        last = db.last_transaction()
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        tm.begin()
        root = conn.root()
        root["a"].value = 2          # stored before the bad object (probably)
        root["bad"] = make_bad(tmp_path)
        root["b"].value = 2
        with pytest.raises(Exception) as info:
            tm.commit()
        assert_names(info.value, "pickle", "Unpicklable")
        tm.abort()
        assert db.last_transaction() == last, "the failed commit wrote a transaction"
        # another process can commit: no lock is left held
        run("worker_change.py", uri, "b=5", timeout=60)
        # and so can this connection
        tm.begin()
        assert "bad" not in conn.root()
        assert conn.root()["a"].value == 1
        assert conn.root()["b"].value == 5
        conn.root()["a"].value = 3
        tm.commit()
        conn.close()
    finally:
        db.close()
    assert read_all(path) == {"a": 3, "b": 5}
    storage = amphora.open_storage(uri)
    try:
        descriptions = [t.description for t in storage.iterator()]
        # root creation, make_db, the other process, ours: the failed commit left nothing
        assert len(descriptions) == 4, descriptions
    finally:
        storage.close()
