"""``amphora history URI`` lists the undoable transactions; ``amphora undo URI TID`` undoes
one, as a new transaction, and refuses with a one-line error what it cannot undo."""
from __future__ import annotations

import amphora

from test_cli import one_error_line, run


def test_history_lists_and_undo_undoes(tmp_path):
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}")
    with db.transaction("set x") as conn:
        conn.root.x = 1
    with db.transaction("change x") as conn:
        conn.root.x = 2
    db.close()
    listed = run("history", "sqlite:///app.db", cwd=tmp_path).stdout.splitlines()
    assert listed[0] == "3 undoable transactions, newest first"
    assert listed[1].endswith("change x") and listed[2].endswith("set x")
    tid = listed[1].split()[0]
    assert run("undo", "sqlite:///app.db", tid, cwd=tmp_path).stdout.startswith(f"undid {tid}")
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}")
    with db.transaction() as conn:
        assert conn.root.x == 1
    db.close()
    failed = run("undo", "sqlite:///app.db", "0x1", cwd=tmp_path, ok=False)
    assert "is not in the database" in one_error_line(failed)
