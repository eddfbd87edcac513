"""README.md is executable documentation: its Python examples run, and its set-up
commands are the ones the repository's scripts and CI use."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from doc_examples import python_blocks, run_blocks

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_the_readme_has_examples():
    assert len(python_blocks(README)) >= 2


def test_the_python_examples_run(tmp_path):
    """The blocks run in order, as one program, in an empty directory (so the SQLite
    files they name by relative URI land there); what they print is checked against the
    ``# prints ...`` comments beside the calls."""
    pytest.importorskip("amphora.storage.sqlite", reason="the SQLite storage is not available")
    done, expected = run_blocks("README.md", python_blocks(README), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_the_setup_commands_exist():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(\./scripts/\S+)", setup, re.M)
    assert commands == ["./scripts/serve", "./scripts/test"]
    for command in ["./scripts/example", *commands]:
        path = REPO / command
        assert path.is_file(), command
        assert path.stat().st_mode & 0o111, f"{command} is not executable"


def test_the_serve_command_serves_the_embedded_default_where_the_readme_says():
    """``./scripts/serve`` runs ``amphora serve`` on the SQLite file and address the
    README gives clients."""
    script = (REPO / "scripts" / "serve").read_text()
    served = re.findall(r"^exec \.venv/bin/amphora serve (\S+) --listen (\S+) \"\$@\"$",
                        script, re.M)
    assert served == [("sqlite:///var/app.db", "127.0.0.1:8100")]
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert "var/app.db" in setup and 'amphora.open("amphora://127.0.0.1:8100")' in setup


def test_ci_runs_the_readme_test_command():
    ci = REPO / ".ci" / "run"
    assert ci.stat().st_mode & 0o111
    lines = [line.strip() for line in ci.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in lines
    # the README's command on the default Python, then on the newest pyenv has
    assert lines.index("./scripts/test") < lines.index('PYENV_VERSION="$newest" ./scripts/test')


@pytest.mark.skipif(not (REPO / ".venv" / ".amphora-installed-test").exists()
                    and not (REPO / ".venv" / ".amphora-installed-base").exists(),
                    reason="./scripts/serve would first install .venv (made by ./scripts/test)")
def test_the_serve_command_names_the_address_it_was_given():
    process = subprocess.Popen([str(REPO / "scripts" / "serve"), "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        served = process.stdout.readline()  # "amphora: serving ... on HOST:PORT"
    finally:
        process.terminate()
        _, hint = process.communicate(timeout=30)
    assert "on 127.0.0.1:" in served
    assert "amphora://127.0.0.1:0" in hint and "8100" not in hint
