"""The ``amphora`` command, run as a real process against real SQLite (and ZODB
FileStorage) files.

Each test reads like a use of the command: set a database up with the library, run the
command, check what it printed and what it left on disk.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

import amphora
from amphora.cli import build_parser

pytest.importorskip("amphora.storage.sqlite", reason="the SQLite storage is not available")

REPO = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("amphora")
    if script.exists():
        return [str(script)]  # the installed console script
    return [sys.executable, "-m", "amphora"]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """``amphora ARGS`` in ``cwd``; with ``ok``, it must succeed."""
    done = subprocess.run(_command() + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single ``amphora: error: ...`` line a failed command must print."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("amphora: error: ")
    return lines[0]


def dump(storage) -> list[tuple]:
    """Everything ``iterator()`` yields: tids, metadata and records."""
    return [(txn.tid, bytes(txn.user), bytes(txn.description), txn.extension,
             sorted((record.oid, record.data) for record in txn))
            for txn in storage.iterator()]


def dump_uri(uri: str) -> list[tuple]:
    storage = amphora.open_storage(uri, read_only=True)
    try:
        return dump(storage)
    finally:
        storage.close()


@pytest.fixture
def app(tmp_path) -> str:
    """``sqlite:///app.db`` (relative to tmp_path): a root, a BTree of mappings, changed
    over four transactions with users and descriptions."""
    uri = f"sqlite:///{tmp_path / 'app.db'}"
    db = amphora.open(uri)
    conn = db.open()  # ZODB style, with the thread's transaction manager
    conn.root.people = OOBTree()
    transaction.get().setUser("ann")
    transaction.get().note("add people")
    transaction.commit()
    conn.close()
    for name in ("bob", "cy"):
        with db.transaction(f"add {name}") as conn:
            conn.root.people[name] = PersistentMapping(name=name)
    with db.transaction("rename") as conn:
        conn.root.title = "staff"
    db.close()
    return uri


# -- info ---------------------------------------------------------------------------------

def test_info_on_a_populated_database(app, tmp_path):
    out = run("info", app, cwd=tmp_path).stdout
    storage = amphora.open_storage(app, read_only=True)
    try:
        last = storage.lastTransaction()
        objects, transactions = len(storage), len(list(storage.iterator()))
    finally:
        storage.close()
    assert re.search(rf"objects:\s+{objects}\n", out)
    assert re.search(rf"transactions:\s+{transactions}\n", out)
    assert f"0x{last.hex()}" in out and "UTC" in out
    assert re.search(r"size:\s+[\d,]+ bytes", out)


def test_info_on_an_empty_database(tmp_path):
    amphora.open_storage(f"sqlite:///{tmp_path / 'empty.db'}").close()  # nothing committed
    out = run("info", "sqlite:///empty.db", cwd=tmp_path).stdout
    assert re.search(r"objects:\s+0\n", out)
    assert re.search(r"transactions:\s+0\n", out)
    assert re.search(r"last transaction:\s+none", out)


def test_info_does_not_change_the_file(app, tmp_path):
    before = dump_uri(app)
    run("info", app, cwd=tmp_path)
    assert dump_uri(app) == before


# -- history ------------------------------------------------------------------------------

def test_history_lists_revisions_newest_first(app, tmp_path):
    out = run("history", app, "0", cwd=tmp_path).stdout
    lines = out.splitlines()
    assert "PersistentMapping" in lines[0]
    descriptions = [line.split()[-1] for line in lines[2:]]
    # the root was written at creation, by "add people" and by "rename"
    assert descriptions == ["rename", "people", "creation"]
    assert "ann" in lines[3]


def test_history_size_and_oid_forms(app, tmp_path):
    decimal = run("history", app, "0", "--size", "1", cwd=tmp_path).stdout
    assert len(decimal.splitlines()) == 3  # the title, the header, one revision
    assert run("history", app, "0x0", "--size", "1", cwd=tmp_path).stdout == decimal


def test_history_of_an_unknown_oid(app, tmp_path):
    line = one_error_line(run("history", app, "0x7777", cwd=tmp_path, ok=False))
    assert "0x7777" in line


# -- pack ---------------------------------------------------------------------------------

def test_pack_removes_old_revisions_and_garbage(app, tmp_path):
    db = amphora.open(app)
    with db.transaction() as conn:
        conn.root.people["dan"] = PersistentMapping(name="dan")
    with db.transaction() as conn:
        garbage_oid = conn.root.people["dan"]._p_oid
        del conn.root.people["dan"]
    db.close()

    kept = run("pack", app, "--days", "1", cwd=tmp_path).stdout
    assert kept.startswith(f"packed {app}")
    assert len(run("history", app, "0", cwd=tmp_path).stdout.splitlines()) == 5

    run("pack", app, "--no-gc", cwd=tmp_path)
    assert len(run("history", app, "0", cwd=tmp_path).stdout.splitlines()) == 3
    run("history", app, f"0x{garbage_oid.hex()}", cwd=tmp_path)  # still there

    run("pack", app, cwd=tmp_path)
    one_error_line(run("history", app, f"0x{garbage_oid.hex()}", cwd=tmp_path, ok=False))
    with amphora.open(app) as db, db.transaction() as conn:
        assert sorted(conn.root.people) == ["bob", "cy"]
        assert conn.root.title == "staff"


# -- copy ---------------------------------------------------------------------------------

def test_copy_sqlite_to_sqlite(app, tmp_path):
    out = run("copy", app, "sqlite:///copy.db", cwd=tmp_path).stdout
    assert out.startswith(f"copied {len(dump_uri(app))} transactions")
    assert dump_uri("sqlite:///" + str(tmp_path / "copy.db")) == dump_uri(app)


def test_a_copy_is_a_working_database(app, tmp_path):
    run("copy", app, "sqlite:///copy.db", cwd=tmp_path)
    with amphora.open(f"sqlite:///{tmp_path / 'copy.db'}") as db:
        with db.transaction() as conn:
            conn.root.people["eve"] = PersistentMapping(name="eve")  # gets a new oid
        with db.transaction() as conn:
            assert {k: v["name"] for k, v in conn.root.people.items()} == {
                "bob": "bob", "cy": "cy", "eve": "eve"}


def test_copy_refuses_a_non_empty_destination(app, tmp_path):
    run("copy", app, "sqlite:///copy.db", cwd=tmp_path)
    before = dump_uri(f"sqlite:///{tmp_path / 'copy.db'}")
    line = one_error_line(run("copy", app, "sqlite:///copy.db", cwd=tmp_path, ok=False))
    assert "not empty" in line
    assert dump_uri(f"sqlite:///{tmp_path / 'copy.db'}") == before


def test_copy_incremental_continues_an_earlier_copy(app, tmp_path):
    run("copy", app, "sqlite:///copy.db", cwd=tmp_path)
    with amphora.open(app) as db, db.transaction("later") as conn:
        conn.root.people["fay"] = PersistentMapping(name="fay")
    out = run("copy", "--incremental", app, "sqlite:///copy.db", cwd=tmp_path).stdout
    assert out.startswith("copied 1 transaction ")
    assert dump_uri(f"sqlite:///{tmp_path / 'copy.db'}") == dump_uri(app)
    again = run("copy", "--incremental", app, "sqlite:///copy.db", cwd=tmp_path).stdout
    assert again.startswith("copied 0 transactions")


def test_copy_incremental_refuses_an_unrelated_destination(app, tmp_path):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    amphora.open(other).close()  # a database of its own, with its root
    before = dump_uri(other)
    line = one_error_line(run("copy", "--incremental", app, "sqlite:///other.db",
                              cwd=tmp_path, ok=False))
    assert "not a copy" in line
    assert dump_uri(other) == before


def test_round_trip_through_a_zodb_filestorage(app, tmp_path):
    pytest.importorskip("ZODB")
    from ZODB.FileStorage import FileStorage

    run("copy", app, "data.fs", cwd=tmp_path)
    run("copy", "file://data.fs", "sqlite:///back.db", cwd=tmp_path)

    original = dump_uri(app)
    fs = FileStorage(str(tmp_path / "data.fs"), read_only=True)
    try:
        assert dump(fs) == original
    finally:
        fs.close()
    assert dump_uri(f"sqlite:///{tmp_path / 'back.db'}") == original


def test_zodb_opens_a_copied_filestorage(app, tmp_path):
    ZODB = pytest.importorskip("ZODB")
    run("copy", app, "data.fs", cwd=tmp_path)
    db = ZODB.DB(str(tmp_path / "data.fs"))
    try:
        with db.transaction() as conn:
            assert sorted(conn.root()["people"]) == ["bob", "cy"]
            assert conn.root()["title"] == "staff"
    finally:
        db.close()


def test_copy_shows_progress_on_a_terminal(app, tmp_path):
    pty = pytest.importorskip("pty")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(_command() + ["copy", app, "sqlite:///copy.db"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
        os.close(terminal)
        terminal = None
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)
    assert done.returncode == 0
    assert b"copying" in shown
    assert done.stdout.startswith(f"copied {len(dump_uri(app))} transactions")


# -- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["info", "bogus://x"], "unknown storage scheme 'bogus'"),
    (["info", "sqlite:///app.db?colour=blue"], "unknown option"),
    (["info", "sqlite:///missing.db"], "no such file"),
    (["history", "sqlite:///missing.db", "0"], "no such file"),
    (["pack", "sqlite:///missing.db"], "no such file"),
    (["copy", "sqlite:///missing.db", "sqlite:///new.db"], "no such file"),
    (["copy", "missing.fs", "sqlite:///new.db"], "no such file"),
])
def test_user_errors_print_one_line_and_exit_2(app, tmp_path, args, says):
    line = one_error_line(run(*args, cwd=tmp_path, ok=False))
    assert says in line
    assert not (tmp_path / "missing.db").exists()
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("command", [["info"], ["history", "+", "0"], ["pack"],
                                     ["copy", "+", "sqlite:///new.db"]])
def test_a_file_that_is_not_an_amphora_database(tmp_path, command):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are my notes, not a database\n" * 100)
    args = [arg if arg != "+" else "sqlite:///notes.db" for arg in command]
    if len(args) == 1:
        args.append("sqlite:///notes.db")
    one_error_line(run(*args, cwd=tmp_path, ok=False))
    assert junk.read_bytes() == b"these are my notes, not a database\n" * 100
    assert not (tmp_path / "new.db").exists()


def test_a_file_name_instead_of_a_uri(app, tmp_path):
    line = one_error_line(run("info", "app.db", cwd=tmp_path, ok=False))
    assert "sqlite:///app.db" in line and "relative" in line
    absolute = str(tmp_path / "app.db")
    line = one_error_line(run("info", absolute, cwd=tmp_path, ok=False))
    assert f"sqlite:///{absolute}" in line and "absolute" in line and "relative" not in line


def test_a_file_that_is_not_a_filestorage(tmp_path):
    pytest.importorskip("ZODB")
    (tmp_path / "junk.fs").write_bytes(b"junk" * 100)
    line = one_error_line(run("copy", "junk.fs", "sqlite:///new.db", cwd=tmp_path, ok=False))
    assert "not a ZODB FileStorage file" in line
    assert (tmp_path / "junk.fs").read_bytes() == b"junk" * 100


def test_bad_arguments_are_usage_errors(tmp_path):
    done = run("history", "memory://", "twelve", cwd=tmp_path, ok=False)
    assert done.returncode == 2
    assert "not an oid" in done.stderr and "Traceback" not in done.stderr


# -- help and documentation ---------------------------------------------------------------

def _commands() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def test_every_command_has_help(tmp_path):
    assert "info" in run("--help", cwd=tmp_path).stdout
    for name in _commands():
        assert run(name, "--help", cwd=tmp_path).stdout.startswith(f"usage: amphora {name}")


def test_the_readme_documents_every_command_and_option():
    readme = (REPO / "README.md").read_text()
    for name, parser in _commands().items():
        assert f"amphora {name}" in readme, f"README.md does not document 'amphora {name}'"
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in readme, f"README.md does not mention {name} {option}"


# -- errors a new user met (each printed a traceback or a vague line before) ----------------

def test_a_listen_port_out_of_range_is_one_error_line(tmp_path):
    line = one_error_line(run("serve", "memory://", "--listen", "127.0.0.1:99999",
                              cwd=tmp_path, ok=False))
    assert "99999" in line and "out of range" in line


def test_missing_tls_files_are_named(tmp_path):
    line = one_error_line(run("serve", "memory://", "--listen", "127.0.0.1:0",
                              "--tls-cert", "nope.pem", "--tls-key", "nokey.pem",
                              cwd=tmp_path, ok=False))
    assert "nope.pem" in line
    line = one_error_line(run("info", "amphoras://127.0.0.1:1?ca_file=missing-ca.pem",
                              cwd=tmp_path, ok=False))
    assert "missing-ca.pem" in line


def test_a_postgresql_uri_without_psycopg_says_what_to_install(tmp_path):
    # A psycopg that cannot be imported, found first on the path: as if it were not installed.
    fake = tmp_path / "no-psycopg" / "psycopg"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('psycopg is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    done = subprocess.run(_command() + ["info", "postgresql://bob@127.0.0.1:1/app"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    line = one_error_line(done)
    assert "amphora[postgresql]" in line


def test_history_into_a_closed_pipe_ends_quietly(tmp_path):
    """``amphora history URI 0 --size 3000 | head -1``: the reader leaves after one line."""
    uri = f"sqlite:///{tmp_path / 'busy.db'}"
    storage = amphora.open_storage(uri)
    db = amphora.DB(storage)
    for n in range(3000):
        with db.transaction() as conn:
            conn.root.n = n
    db.close()
    process = subprocess.Popen(_command() + ["history", uri, "0", "--size", "3000"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0, stderr
    assert stderr == b""
    # the header counts the object's revisions, not the ones shown
    assert b"3,001 revisions" in first


def test_the_history_header_counts_every_revision(app, tmp_path):
    out = run("history", app, "0", "--size", "1", cwd=tmp_path).stdout
    assert "3 revisions, the newest 1 shown" in out.splitlines()[0]
    out = run("history", app, "0", "--size", "3", cwd=tmp_path).stdout
    assert "3 revisions, newest first" in out.splitlines()[0]


def test_pack_measures_the_file_without_its_log_and_vacuum_gives_space_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'big.db'}"
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.blobs = PersistentMapping({n: PersistentMapping(text="x" * 2000)
                                             for n in range(1000)})
    with db.transaction() as conn:
        del conn.root.blobs  # about 2 MB of garbage for the pack
    db.close()
    out = run("pack", uri, cwd=tmp_path).stdout
    before, after = (int(n.replace(",", "")) for n in
                     re.search(r"size ([\d,]+) -> ([\d,]+) bytes", out).groups())
    assert after <= before  # the log the pack wrote was counted as growth
    free = int(re.search(r"([\d,]+) bytes of the file are free", out).group(1).replace(",", ""))
    assert free > 1_000_000
    out = run("pack", uri, "--vacuum", cwd=tmp_path).stdout
    vacuumed = int(re.search(r"-> ([\d,]+) bytes", out).group(1).replace(",", ""))
    assert vacuumed < after - 1_000_000 and "are free" not in out
    assert (tmp_path / "big.db").stat().st_size == vacuumed
    line = one_error_line(run("pack", "memory://", "--vacuum", cwd=tmp_path, ok=False))
    assert "--vacuum" in line
