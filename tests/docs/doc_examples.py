"""Running a document's Python examples: the ```python blocks, in order, as one program in
an empty directory, with what they print checked against their ``# prints ...`` comments
(one comment per printed line)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block."""
    return [(text.count("\n", 0, match.start()) + 2, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def run_blocks(document: str, blocks: list[tuple[int, str]], directory: Path
               ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``blocks`` of ``document`` (its name, for tracebacks) in ``directory``; the
    finished process and the lines the ``# prints`` comments expect."""
    parts, expected = [], []
    for line_number, code in blocks:
        parts.append(f"# ---- {document} line {line_number} ----\n{code}")
        expected += re.findall(r"# prints (.+)$", code, re.M)
    script = directory / (Path(document).stem + "_examples.py")
    script.write_text("\n".join(parts))
    done = subprocess.run([sys.executable, str(script)], cwd=directory, capture_output=True,
                          text=True, timeout=120)
    return done, expected
