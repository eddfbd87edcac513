"""docs/catalog.md is executable documentation: its Python examples run, and print what
the ``# prints ...`` comments say."""
from __future__ import annotations

from pathlib import Path

from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "catalog.md").read_text()


def test_the_python_examples_run(tmp_path):
    blocks = python_blocks(DOC)
    assert len(blocks) >= 3
    done, expected = run_blocks("docs/catalog.md", blocks, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_every_condition_is_documented():
    import amphora.catalog
    for name in ("Eq", "InRange", "AnyOf", "AllOf", "Contains"):
        assert getattr(amphora.catalog, name)
        assert f"`{name}(" in DOC, name
