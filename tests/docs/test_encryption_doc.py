"""docs/encryption.md is executable documentation: its Python examples run, and print what
the ``# prints ...`` comments say; its record layout is the code's."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from doc_examples import python_blocks, run_blocks

from amphora.storage import encrypted

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "encryption.md").read_text()


_MASKS = [(re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"), "TIME"),
          (re.compile(r"in \d+\.\d\d s"), "in T s"),
          (re.compile(r"size [\d,]+ -> [\d,]+ bytes"), "size N -> N bytes")]


def masked(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text.strip()


def test_the_examples_run(tmp_path):
    """The Python examples, in order, then the console session of ``amphora keys`` on
    the database and keyring they made: each command's output as the document shows it
    (dates, durations and sizes masked)."""
    blocks = python_blocks(DOC)
    assert len(blocks) >= 4
    done, expected = run_blocks("docs/encryption.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
    assert (tmp_path / "app.keyring").exists()

    (tmp_path / "passphrase.txt").write_text("correct horse battery staple\n")
    session = re.search(r"```console\n(.*?)```", DOC, re.S).group(1)
    commands = re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", session, re.M)
    assert [command.split()[:3] for command, _ in commands] == [
        ["amphora", "keys", "info"], ["amphora", "keys", "rotate"],
        ["amphora", "keys", "retire"], ["amphora", "pack", "--no-gc"],
        ["amphora", "keys", "retire"], ["amphora", "keys", "info"]]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("AMPHORA_PASSPHRASE", None)
    for command, output in commands:
        ran = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert masked(ran.stdout + ran.stderr) == masked(output), command
        assert ran.returncode == (2 if "still seals" in output else 0), command


def test_the_documented_layout_is_the_code_s():
    assert encrypted.MAGIC == bytes.fromhex("".join("A7 5E".split()))
    assert f"format {encrypted.FORMAT}" in DOC
    # magic, format, kind, key id, database id, oid, tid, base serial, salt, number
    assert encrypted._HEADER.size == 2 + 1 + 1 + 4 + 16 + 8 + 8 + 8 + 16 + 4 == 68
    assert "The 68 bytes before the ciphertext are the associated data" in DOC
    assert f"its bucket plus {encrypted._HEADER.size + encrypted._TAG} bytes" in DOC
    assert [encrypted.padded_size(n) for n in (1, 63, 64, 1023, 1024, 1200)] == \
        [64, 64, 128, 1024, 1152, 1280]
