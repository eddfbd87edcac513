"""``amphora at URI MOMENT info|show|copy``: the existing commands, on a past state."""
from __future__ import annotations

import datetime
import json

import pytest

import amphora
from amphora.cli import main
from amphora.utils import tid_to_datetime


@pytest.fixture
def history(tmp_path, monkeypatch):
    """A database with two states of the root: ``(uri, first tid, second tid)``."""
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///prod.db"
    with amphora.open(uri) as db:
        with db.transaction("first") as conn:
            conn.root.value = "first"
        first = db.last_transaction()
        with db.transaction("second") as conn:
            conn.root.value = "second"
            conn.root.more = "added later"
        second = db.last_transaction()
    return uri, first, second


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_at_show_prints_the_record_as_it_was(history, capsys):
    uri, first, _second = history
    status, out, _ = run(capsys, "at", uri, "0x" + first.hex(), "show", "0")
    assert status == 0
    document = json.loads(out)
    assert document["tid"] == "0x" + first.hex()
    assert document["state"]["data"] == {"value": "first"}
    _, out, _ = run(capsys, "show", uri, "0")
    assert json.loads(out)["state"]["data"]["value"] == "second"


def test_at_info_counts_the_transactions_up_to_the_moment(history, capsys):
    uri, first, _second = history
    status, out, _ = run(capsys, "at", uri, "0x" + first.hex(), "info")
    assert status == 0
    assert "transactions:     2" in out  # the root's creation and "first"
    assert f"last transaction: 0x{first.hex()}" in out


def test_at_copy_extracts_the_past_state_into_a_new_database(history, capsys):
    uri, first, _second = history
    status, out, _ = run(capsys, "at", uri, "0x" + first.hex(), "copy", "sqlite:///old.db")
    assert status == 0
    assert out.startswith("copied 2 transactions")
    with amphora.open("sqlite:///old.db") as db:
        assert db.last_transaction() == first
        with db.transaction() as conn:
            assert dict(conn.root()) == {"value": "first"}


def test_an_iso_moment_includes_what_was_committed_by_then(history, capsys):
    uri, _first, second = history
    _, out, _ = run(capsys, "at", uri, "2001-01-01T00:00", "info")
    assert "last transaction: none" in out
    _, out, _ = run(capsys, "at", uri, "2999-01-01", "info")  # the future is now
    assert f"last transaction: 0x{second.hex()}" in out
    # a microsecond after the commit (isoformat drops what is finer), with its offset
    moment = (tid_to_datetime(second) + datetime.timedelta(microseconds=1)).isoformat()
    _, out, _ = run(capsys, "at", uri, moment, "show", "0")
    assert json.loads(out)["state"]["data"]["more"] == "added later"


def test_a_bad_moment_or_a_missing_file_is_one_line_and_status_2(history, capsys):
    uri, _first, _second = history
    with pytest.raises(SystemExit) as info:
        main(["at", uri, "yesterday", "info"])
    assert info.value.code == 2
    assert "not an ISO-8601" in capsys.readouterr().err
    status, _, err = run(capsys, "at", "sqlite:///missing.db", "2026-01-01", "info")
    assert status == 2
    assert err.startswith("amphora: error:") and "no such file" in err


def test_info_of_a_past_moment_counts_the_objects_and_bytes_of_then(tmp_path, monkeypatch,
                                                                     capsys):
    from persistent.mapping import PersistentMapping
    monkeypatch.chdir(tmp_path)
    uri = "sqlite:///grow.db"
    with amphora.open(uri) as db:
        with db.transaction() as conn:
            conn.root.a = PersistentMapping(n=1)
        first = db.last_transaction()
        with db.transaction() as conn:
            conn.root.b = PersistentMapping(n=2)
            conn.root.c = PersistentMapping(n=3, text="x" * 5000)

    def info(*argv):
        status, out, _ = run(capsys, *argv)
        assert status == 0
        return {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
                for line in out.splitlines()}

    now = info("info", uri)
    assert now["objects"] == "4"
    long_ago = info("at", uri, "2020-01-01", "info")
    assert (long_ago["objects"], long_ago["size"], long_ago["transactions"]) == (
        "0", "0 bytes", "0")
    then = info("at", uri, "0x" + first.hex(), "info")
    assert then["objects"] == "2"  # the root and a
    size_then = int(then["size"].split()[0].replace(",", ""))
    assert 0 < size_then < 5000  # c's 5000 characters came later
    view = info("info", f"before://?storage={uri}&at=0x{first.hex()}")
    assert (view["objects"], view["size"]) == (then["objects"], then["size"])
