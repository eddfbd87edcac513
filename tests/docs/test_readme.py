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


def test_the_serve_command_serves_the_kanban_on_the_embedded_default_where_the_readme_says():
    """``./scripts/serve`` runs the Kanban on the SQLite file and address the README gives,
    and the README names the amphora server's command beside it."""
    script = (REPO / "scripts" / "serve").read_text()
    served = re.findall(
        r"^exec \.venv/bin/amphora kanban serve (\S+) --listen (\S+) \"\$@\"$", script, re.M)
    assert served == [("sqlite:///var/kanban.db", "127.0.0.1:8000")]
    setup = " ".join(README.split("## Set up", 1)[1].split("\n## ", 1)[0].split())
    assert "var/kanban.db" in setup and "http://127.0.0.1:8000" in setup
    assert ("amphora serve sqlite:///var/app.db --listen 127.0.0.1:8100" in setup
            and 'amphora.open("amphora://127.0.0.1:8100")' in setup)


def test_ci_runs_the_readme_test_command():
    ci = REPO / ".ci" / "run"
    assert ci.stat().st_mode & 0o111
    lines = [line.strip() for line in ci.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in lines
    # the README's command on the default Python and, at the same time, on the newest
    # pyenv has, each installed first
    assert "./scripts/test || status=$?" in lines
    newest = lines.index('PYENV_VERSION="$newest" ./scripts/test --ignore=tests/peer '
                         '--ignore=tests/kanban \\')
    assert lines[newest + 1] == '--ignore=tests/deploy --ignore=tests/docs >"$log" 2>&1 &'

    assert lines.index("./scripts/test --version") < lines.index(
        'PYENV_VERSION="$newest" ./scripts/test --version') < lines.index(
        "./scripts/test || status=$?")


def _venv_is_current() -> bool:
    """Whether .venv's install stamp matches what scripts/_venv.sh would install now: if
    not, ./scripts/serve would reinstall into the shared .venv from the test's copy."""
    import hashlib
    venv = REPO / ".venv"
    if not (venv / "bin" / "python").exists():
        return False
    digest = hashlib.sha256()
    for path in [REPO / "pyproject.toml", REPO / "setup.py",
                 *sorted((REPO / "src" / "amphora").glob("*.c"))]:
        digest.update(path.read_bytes())
    digest.update(subprocess.run([str(venv / "bin" / "python"), "-VV"], capture_output=True,
                                 check=True).stdout)
    want = digest.hexdigest()
    return any((venv / f".amphora-installed-{extras}").exists()
               and (venv / f".amphora-installed-{extras}").read_text().strip() == want
               for extras in ("test", "kanban"))


@pytest.mark.skipif(not _venv_is_current(),
                    reason="./scripts/serve would first install .venv (made by ./scripts/test, "
                           "stale or missing)")
def test_the_serve_command_starts_the_kanban_and_prints_where_to_sign_in(tmp_path):
    """The first start of ``./scripts/serve`` prints the address it listens on and the
    first administrator's sign-in link; the app answers there. (Run on a copy of the
    scripts in ``tmp_path``, so that the repository's ``var/`` is not touched.)"""
    import shutil
    import urllib.request
    for name in ("scripts", "pyproject.toml", "setup.py"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    for name in (".venv", "src"):
        (tmp_path / name).symlink_to(REPO / name)
    process = subprocess.Popen([str(tmp_path / "scripts" / "serve"), "--listen",
                                "127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = process.stdout.readline()
        second = process.stdout.readline()
        url = second.split()[-1]
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as reply:
            assert reply.status == 200
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert first.startswith("kanban: first administrator: admin@localhost, sign in once at "
                            "http://127.0.0.1:"), first
    assert "/invite/" in first
    assert second.startswith("kanban: listening on http://127.0.0.1:"), second
    assert (tmp_path / "var" / "kanban.db").exists()
