"""docs/blobs.md is executable documentation: its Python examples run, in order, and print
what the ``# prints ...`` comments say."""
from __future__ import annotations

from pathlib import Path

from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "blobs.md").read_text()


def test_the_python_examples_run(tmp_path):
    blocks = python_blocks(DOC)
    assert blocks
    done, expected = run_blocks("docs/blobs.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
