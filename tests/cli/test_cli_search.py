"""``amphora show``, ``amphora mirror`` and ``amphora search``: the JSON side of a database
on the command line. The records are of a class the command cannot import (its module
exists only in this test's process), which proves the transcoding is symbolic."""
from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest

import amphora

from test_cli import one_error_line, run

MODULE = "cli_only_here_people"


@pytest.fixture(params=["sqlite", "postgresql"])
def people(request, tmp_path, monkeypatch):
    """An SQLite file (``people.db``) or a PostgreSQL schema with two Person objects of a
    module only this process has; the URI and Ann's oid."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / f"{MODULE}.py").write_text(textwrap.dedent("""
        from persistent import Persistent

        class Person(Persistent):
            def __init__(self, name, email):
                self.name, self.email, self.tags = name, email, {"staff"}
    """))
    monkeypatch.syspath_prepend(str(lib))
    module = __import__(MODULE)
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'people.db'}"
    else:
        import pgserver
        uri = pgserver.schema_uri(tmp_path / "people")
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.ann = module.Person("Ann", "ann@example.com")
        conn.root.bob = module.Person("Bob", "bob@example.org")
        ann = conn.root.ann
    oid = ann._p_oid  # given at commit
    db.close()
    sys.modules.pop(MODULE, None)
    return uri, int.from_bytes(oid, "big")


def test_show_prints_a_record_as_json_without_its_class(people, tmp_path):
    uri, oid = people
    done = run("show", uri, str(oid), cwd=tmp_path)
    document = json.loads(done.stdout)
    assert document["oid"] == oid and document["class_name"] == f"{MODULE}.Person"
    assert document["state"]["name"] == "Ann" and document["state"]["email"] == "ann@example.com"
    assert document["tid"].startswith("0x")


def test_show_of_an_unknown_oid_is_one_error_line(people, tmp_path):
    uri, _ = people
    line = one_error_line(run("show", uri, "0x999", cwd=tmp_path, ok=False))
    assert "999" in line or "0x999" in line


def test_show_of_a_missing_revision_names_the_tid_not_the_oid(people, tmp_path):
    uri, oid = people
    line = one_error_line(run("show", uri, str(oid), "--tid", "0x1", cwd=tmp_path, ok=False))
    assert "no revision with tid 0x0000000000000001" in line and "no object" not in line
    line = one_error_line(run("show", uri, "0x999", "--tid", "0x1", cwd=tmp_path, ok=False))
    assert "0x999" in line or "2457" in line


def test_search_needs_a_mirror_then_finds_documents(people, tmp_path):
    uri, oid = people
    condition = "state->>'email' = %s"
    line = one_error_line(run("search", uri, condition, "--param", "ann@example.com",
                              cwd=tmp_path, ok=False))
    assert "no JSON mirror" in line
    done = run("mirror", uri, cwd=tmp_path)
    assert "JSON mirror ready" in done.stdout and "3 documents" in done.stdout
    done = run("search", uri, condition, "--param", "ann@example.com", cwd=tmp_path)
    found = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(doc["oid"], doc["state"]["name"]) for doc in found] == [(oid, "Ann")]
    assert "1 match" in done.stderr
    done = run("search", uri, "1 = 1", "--class", f"{MODULE}.Person", "--limit", "1",
               cwd=tmp_path)
    assert len(done.stdout.splitlines()) == 1 and "2 matches (1 shown)" in done.stderr
    done = run("mirror", uri, "--drop", cwd=tmp_path)
    assert "dropped" in done.stdout
    one_error_line(run("search", uri, "1 = 1", cwd=tmp_path, ok=False))


def test_bad_sql_is_one_error_line_and_changes_nothing(people, tmp_path):
    uri, _ = people
    run("mirror", uri, cwd=tmp_path)
    line = one_error_line(run("search", uri, "no_such_column = 1", cwd=tmp_path, ok=False))
    assert re.search(r"no such column|column .no_such_column. does not exist", line)
    done = run("search", uri, "1 = 1", cwd=tmp_path)
    assert len(done.stdout.splitlines()) == 3


def test_a_follow_mirror_is_kept_by_amphora_follow(people, tmp_path, monkeypatch):
    uri, oid = people
    done = run("mirror", uri, "--follow", cwd=tmp_path)
    assert "amphora follow" in done.stdout
    module = __import__(MODULE)
    db = amphora.open(uri)
    with db.transaction() as conn:
        conn.root.cy = module.Person("Cy", "cy@example.com")
    db.close()
    sys.modules.pop(MODULE, None)
    condition = "state->>'email' = %s"
    assert run("search", uri, condition, "--param", "cy@example.com",
               cwd=tmp_path).stdout == ""
    done = run("follow", uri, "--once", cwd=tmp_path)
    assert "1 more transaction" in done.stdout
    found = run("search", uri, condition, "--param", "cy@example.com", cwd=tmp_path)
    assert json.loads(found.stdout)["state"]["name"] == "Cy"
    run("mirror", uri, "--drop", cwd=tmp_path)
    assert "no mirror in follow mode" in one_error_line(
        run("follow", uri, "--once", cwd=tmp_path, ok=False))


def test_info_says_how_the_mirror_is_kept(people, tmp_path):
    uri, _ = people
    line = r"JSON mirror:\s+(.*)\n"
    assert re.search(line, run("info", uri, cwd=tmp_path).stdout).group(1).startswith("none")
    run("mirror", uri, cwd=tmp_path)
    assert re.search(line, run("info", uri, cwd=tmp_path).stdout).group(1).startswith("sync")
    run("mirror", uri, "--drop", cwd=tmp_path)
    run("mirror", uri, "--follow", cwd=tmp_path)
    following = re.search(line, run("info", uri, cwd=tmp_path).stdout).group(1)
    storage = amphora.open_storage(uri, read_only=True)
    try:
        watermark = storage.mirror_watermark()
    finally:
        storage.close()
    assert following == f"follow (documents current up to 0x{watermark:016x})"
    assert "JSON mirror" not in run("info", "memory://", cwd=tmp_path).stdout
