"""docs/changes.md is executable documentation: its Python examples run, in order, and print
what the ``# prints ...`` comments say."""
from __future__ import annotations

from pathlib import Path

from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "changes.md").read_text()


def test_the_python_examples_run(tmp_path):
    blocks = python_blocks(DOC)
    assert len(blocks) >= 2
    done, expected = run_blocks("docs/changes.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_every_field_of_a_change_is_documented():
    from amphora.feeds import Change
    for name in list(Change.__dataclass_fields__) + ["time"]:
        assert f"`{name}`" in DOC, name
