"""An object whose class can no longer be imported loads as a broken object, as in ZODB:
a placeholder class named after the missing one, its state kept and readable, the object
written back unchanged, and everything else in the database unaffected.

Each step runs in a process of its own, so that the class's module is importable only
where the test says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

GONE = """
from persistent import Persistent

class Gone(Persistent):
    def __init__(self, title):
        self.title = title
"""


def python(code: str, cwd: Path, with_module: bool) -> str:
    """Run ``code`` in a new interpreter in ``cwd`` (``gone_mod`` importable only
    ``with_module``); its standard output."""
    env = {"PYTHONPATH": str(cwd / "lib")} if with_module else {}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=100,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "gone_mod.py").write_text(GONE)
    return tmp_path


def test_an_object_of_a_removed_class_loads_broken_and_the_rest_works(workdir):
    python("""
        import amphora, gone_mod
        from persistent.mapping import PersistentMapping
        with amphora.open("sqlite:///app.db") as db:
            with db.transaction() as conn:
                conn.root.gone = gone_mod.Gone("hello")
                conn.root.other = PersistentMapping(a=1)
                conn.root.listed = [conn.root.gone]
    """, workdir, with_module=True)
    out = python("""
        import json, amphora
        with amphora.open("sqlite:///app.db") as db:
            with db.transaction() as conn:
                gone = conn.root.gone          # reading the root failed before
                refused = ""
                try:
                    gone.title = "changed"
                except amphora.AmphoraError as exc:
                    refused = str(exc)
                print(json.dumps({
                    "broken": isinstance(gone, amphora.Broken),
                    "class": [type(gone).__module__, type(gone).__name__],
                    "state": gone.__Broken_state__,
                    "same_in_list": conn.root.listed[0] is gone,
                    "refused": refused}))
                conn.root.other["a"] = 2       # the rest of the database is writable
                conn.root.again = gone         # a new reference to the broken object
                gone._p_changed = True         # and the object itself written back
    """, workdir, with_module=False)
    seen = json.loads(out)
    assert seen["broken"] and seen["class"] == ["gone_mod", "Gone"]
    assert seen["state"] == {"title": "hello"} and seen["same_in_list"]
    assert "gone_mod.Gone" in seen["refused"]
    out = python("""
        import amphora, gone_mod
        with amphora.open("sqlite:///app.db") as db:
            with db.transaction() as conn:
                gone = conn.root.gone
                print(type(gone) is gone_mod.Gone, gone.title, conn.root.again is gone,
                      conn.root.other["a"])
    """, workdir, with_module=True)
    assert out.split() == ["True", "hello", "True", "2"]


def test_a_filestorage_with_a_removed_class_copied_into_amphora(workdir):
    python("""
        import ZODB, ZODB.FileStorage, transaction, gone_mod
        db = ZODB.DB(ZODB.FileStorage.FileStorage("Data.fs"))
        conn = db.open()
        conn.root()["gone"] = gone_mod.Gone("hello")
        conn.root()["n"] = 7
        transaction.commit()
        db.close()
    """, workdir, with_module=True)
    amphora_command = Path(sys.executable).with_name("amphora")
    subprocess.run([str(amphora_command), "copy", "Data.fs", "sqlite:///copy.db"],
                   cwd=workdir, check=True, capture_output=True, timeout=100)
    out = python("""
        import amphora
        with amphora.open("sqlite:///copy.db") as db:
            with db.transaction() as conn:
                root = conn.root()
                print(root["n"], type(root["gone"]).__name__, root["gone"].__Broken_state__)
    """, workdir, with_module=False)
    assert out.strip() == "7 Gone {'title': 'hello'}"
