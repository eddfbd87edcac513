"""The README's ``console`` examples of the ``amphora`` command, run: each command of each
block on the databases the README names (the example's to-do list, after ``done 2``, and
a ``var/app.db`` of ``app.Person`` objects with a mirror), its output compared with the
README's once the parts that differ from run to run are masked (tids, times, byte
counts and durations, the column widths of a table, an oid)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import amphora
from amphora.utils import tid_to_datetime

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()

pytestmark = pytest.mark.timeout(180)

_MASKS = [
    (re.compile(r"0x[0-9a-f]{16}"), "0xTID"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?"), "TIME"),
    (re.compile(r"[\d,]+ bytes( \(\d+\.\d [KMG]iB\))?"), "N bytes"),
    (re.compile(r"size [\d,]+ ->"), "size N ->"),
    (re.compile(r"in \d+\.\d\d s"), "in T s"),
    (re.compile(r'"oid": \d+'), '"oid": N'),
    (re.compile(r"(?m)^(0xTID\s+TIME UTC)\s+\d+\s"), r"\1 SIZE "),
    (re.compile(r"[ \t]+"), " "),
]


def masked(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def console_blocks() -> list[list[tuple[str, str]]]:
    """Each ``console`` block: its ``(command, expected output)`` pairs."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", README, re.S):
        pairs: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                pairs.append((line[2:], []))
            else:
                pairs[-1][1].append(line)
        blocks.append([(command, "\n".join(output)) for command, output in pairs])
    return blocks


APP = """
from persistent import Persistent

class Person(Persistent):
    def __init__(self, name, email):
        self.name, self.email = name, email
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The to-do list (the example, then ``done 2``) and ``var/app.db``."""
    work = tmp_path_factory.mktemp("readme")
    env = environment(work)
    for args in ([], ["done", "2"]):
        subprocess.run([sys.executable, str(REPO / "examples" / "todo.py"), *args],
                       cwd=work, env=env, check=True, capture_output=True, timeout=120)
    (work / "app.py").write_text(APP)
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import amphora, app
        with amphora.open("sqlite:///var/app.db") as db:
            with db.transaction() as conn:
                conn.root.ann = app.Person("Ann", "ann@example.com")
                conn.root.bob = app.Person("Bob", "bob@example.org")
            db.create_mirror()
    """)], cwd=work, env=env, check=True, capture_output=True, timeout=120)
    return work


def environment(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(work)
    return env


def run(command: str, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(command), cwd=work, env=environment(work),
                          capture_output=True, text=True, timeout=120)


def test_the_readme_has_console_examples_of_the_commands():
    commands = {shlex.split(command)[1] for block in console_blocks()
                for command, _ in block}
    assert {"info", "history", "pack", "copy", "show", "at", "search", "serve"} <= commands


def last_moment(work: Path) -> str:
    with amphora.open(f"sqlite:///{work / 'var' / 'todo.db'}", read_only=True) as db:
        return tid_to_datetime(db.last_transaction()).isoformat()


def test_each_console_example_prints_what_the_readme_shows(workdir):
    for block in console_blocks():
        for command, expected in block:
            words = shlex.split(command)
            if words[1] == "serve":
                continue  # runs until stopped: the next test
            if words[1] == "at":
                # The README's moment is an example; the list did not exist then: the
                # moment of its last transaction shows it.
                command = command.replace(words[3], last_moment(workdir))
            done = run(command, workdir)
            shown = done.stdout + done.stderr
            assert done.returncode == (2 if expected.startswith("amphora: error:") else 0), \
                (command, shown)
            if not expected:  # the README shows the command alone (`at`): it works
                assert words[1] != "at" or (
                    '"oid": 1' in done.stdout if words[4] == "show"
                    else done.stdout.startswith("copied ")), shown
                continue
            assert masked(shown) == masked(expected), command


def test_the_serve_example_prints_its_address(workdir):
    (block,) = [block for block in console_blocks() if "serve" in block[0][0]]
    command, expected = block[0]
    token = workdir / "token"
    token.write_text("s3cret\n")
    words = shlex.split(command)
    words[words.index("--listen") + 1] = "127.0.0.1:0"
    words[words.index("--token-file") + 1] = str(token)
    process = subprocess.Popen(words, cwd=workdir, env=environment(workdir),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert re.sub(r"on \S+", "on ADDRESS", line.strip()) == \
        re.sub(r"on \S+", "on ADDRESS", expected.strip())
