"""docs/encryption.md is executable documentation: its Python examples run, and print what
the ``# prints ...`` comments say; its record layout is the code's."""
from __future__ import annotations

from pathlib import Path

from doc_examples import python_blocks, run_blocks

from amphora.storage import encrypted

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "encryption.md").read_text()


def test_the_python_examples_run(tmp_path):
    blocks = python_blocks(DOC)
    assert len(blocks) >= 4
    done, expected = run_blocks("docs/encryption.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
    assert (tmp_path / "app.keyring").exists()


def test_the_documented_layout_is_the_code_s():
    assert encrypted.MAGIC == bytes.fromhex("".join("A7 5E".split()))
    assert f"format {encrypted.FORMAT}" in DOC
    # magic, format, kind, key id, database id, oid, tid, base serial, salt, number
    assert encrypted._HEADER.size == 2 + 1 + 1 + 4 + 16 + 8 + 8 + 8 + 16 + 4 == 68
    assert "The 68 bytes before the ciphertext are the associated data" in DOC
    assert f"its bucket plus {encrypted._HEADER.size + encrypted._TAG} bytes" in DOC
    assert [encrypted.padded_size(n) for n in (1, 63, 64, 1023, 1024, 1200)] == \
        [64, 64, 128, 1024, 1152, 1280]
