"""``amphora keys``: keyrings made, re-wrapped and described from the command line, with
the passphrase from a file or an environment variable and never from the command line
itself. Each command runs as a real process."""
from __future__ import annotations

import base64
import os
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import amphora

from .conftest import CHEAP, PASSPHRASE

SRC = Path(__file__).resolve().parents[2] / "src"
CHEAP_OPTIONS = ("--kdf-memory", str(CHEAP.memory_cost), "--kdf-iterations",
                 str(CHEAP.iterations), "--kdf-lanes", str(CHEAP.lanes))


def keys(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    """``amphora keys ARGS`` in ``cwd`` (see :func:`amphora_command`)."""
    return amphora_command("keys", *args, cwd=cwd, env=env)


def amphora_command(*args: str, cwd: Path, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
    """``amphora ARGS`` in ``cwd``, with no terminal and only the environment variables
    given beside the usual ones (no AMPHORA_PASSPHRASE unless given)."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("AMPHORA_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC),
                                                             os.environ.get("PYTHONPATH")]))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "amphora", *args], cwd=cwd,
                          env=environment, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one ``amphora: error: ...`` line of a command that failed with status 2."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("amphora: error: ")
    return line


@pytest.fixture
def passphrase_file(tmp_path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    return path


def test_create_makes_a_keyring_the_library_unlocks(tmp_path, passphrase_file):
    done = keys("create", "app.keyring", "--passphrase-file", str(passphrase_file),
                *CHEAP_OPTIONS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "created the keyring app.keyring with key 1" in done.stdout
    keyring = amphora.Keyring.unlock(tmp_path / "app.keyring", PASSPHRASE)
    assert (keyring.key_ids, keyring.current_key_id) == ([1], 1)
    assert stat.S_IMODE(os.stat(tmp_path / "app.keyring").st_mode) == 0o600


def test_the_passphrase_comes_from_an_environment_variable(tmp_path):
    named = keys("create", "a.keyring", "--passphrase-env", "APP_SECRET", *CHEAP_OPTIONS,
                 cwd=tmp_path, env={"APP_SECRET": "from a variable"})
    default = keys("create", "b.keyring", *CHEAP_OPTIONS, cwd=tmp_path,
                   env={"AMPHORA_PASSPHRASE": "from the default variable"})
    assert named.returncode == default.returncode == 0, (named.stderr, default.stderr)
    amphora.Keyring.unlock(tmp_path / "a.keyring", "from a variable")
    amphora.Keyring.unlock(tmp_path / "b.keyring", "from the default variable")


def test_passwd_reads_both_passphrases_from_standard_input(tmp_path):
    created = amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    done = subprocess.run(
        [sys.executable, "-m", "amphora", "keys", "passwd", "app.keyring",
         "--passphrase-file", "-", "--new-passphrase-file", "-"],
        input=f"{PASSPHRASE}\nnew words\n", cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert done.returncode == 0, done.stderr
    assert amphora.Keyring.unlock(tmp_path / "app.keyring", "new words").key(1) == \
        created.key(1)


def test_a_passphrase_is_never_taken_from_the_command_line(tmp_path):
    for args in (["--passphrase", PASSPHRASE], [f"--passphrase={PASSPHRASE}"]):
        line = error_line(keys("create", "app.keyring", *args, cwd=tmp_path))
        assert "never taken from the command line" in line
        assert "--passphrase-env" in line and "--passphrase-file" in line
    done = keys("create", "app.keyring", PASSPHRASE, cwd=tmp_path)  # as an argument
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    assert not (tmp_path / "app.keyring").exists()


def test_without_a_terminal_or_a_source_the_passphrase_is_asked_for_clearly(tmp_path):
    line = error_line(keys("create", "app.keyring", cwd=tmp_path))
    assert "no passphrase" in line and "AMPHORA_PASSPHRASE" in line
    line = error_line(keys("create", "app.keyring", "--passphrase-env", "UNSET_NAME",
                           cwd=tmp_path))
    assert "UNSET_NAME" in line and "not set" in line
    assert not (tmp_path / "app.keyring").exists()


def test_create_refuses_to_replace_a_keyring(tmp_path, passphrase_file):
    first = amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    line = error_line(keys("create", "app.keyring", "--passphrase-file", str(passphrase_file),
                           cwd=tmp_path))
    assert "already exists" in line
    assert amphora.Keyring.unlock(tmp_path / "app.keyring", PASSPHRASE).key(1) == first.key(1)


def test_passwd_rewraps_the_same_keys_under_the_new_passphrase(tmp_path, passphrase_file):
    created = amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    created.add_key()
    done = keys("passwd", "app.keyring", "--passphrase-file", str(passphrase_file),
                "--new-passphrase-env", "NEW_ONE", cwd=tmp_path, env={"NEW_ONE": "new words"})
    assert done.returncode == 0, done.stderr
    keyring = amphora.Keyring.unlock(tmp_path / "app.keyring", "new words")
    assert [keyring.key(i) for i in (1, 2)] == [created.key(1), created.key(2)]
    assert keyring.current_key_id == 2
    with pytest.raises(amphora.KeyringError, match="wrong passphrase"):
        amphora.Keyring.unlock(tmp_path / "app.keyring", PASSPHRASE)


def test_a_wrong_passphrase_is_one_clear_error_and_changes_nothing(tmp_path):
    amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    before = (tmp_path / "app.keyring").read_bytes()
    wrong = {"AMPHORA_PASSPHRASE": "not it", "AMPHORA_NEW_PASSPHRASE": "whatever"}
    line = error_line(keys("passwd", "app.keyring", cwd=tmp_path, env=wrong))
    assert "wrong passphrase for the keyring app.keyring" in line
    line = error_line(keys("rotate", "sqlite:///data.db", "--keyring", "app.keyring",
                           cwd=tmp_path, env=wrong))
    assert "wrong passphrase" in line
    assert (tmp_path / "app.keyring").read_bytes() == before


def test_info_lists_ids_and_dates_without_a_passphrase_and_never_a_key(tmp_path):
    keyring = amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    keyring.add_key()
    done = keys("info", "app.keyring", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["keyring:        app.keyring",
                         "key derivation: Argon2id, 1 pass, 1,024 KiB of memory, 1 lane",
                         "keys:           2 (new records are sealed with the current one)"]
    assert lines[3].split() == ["1", "created", keyring.created(1)]
    assert lines[4].split() == ["2", "created", keyring.created(2), "current"]
    for key_id in (1, 2):
        key = keyring.key(key_id)
        for form in (key.hex(), base64.b64encode(key).decode()):
            assert form not in done.stdout


def test_rotate_and_retire_name_what_is_wrong(tmp_path):
    amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
    env = {"AMPHORA_PASSPHRASE": PASSPHRASE}
    line = error_line(keys("rotate", "sqlite:///missing.db", "--keyring", "app.keyring",
                           cwd=tmp_path, env=env))
    assert "no such file: missing.db" in line
    line = error_line(keys("rotate", "sqlite:///data.db", "--keyring", "nope.keyring",
                           cwd=tmp_path, env=env))
    assert "no keyring at nope.keyring" in line
    missing_key = keys("retire", "sqlite:///data.db", "--keyring", "app.keyring",
                       cwd=tmp_path, env=env)
    assert missing_key.returncode == 2 and "--key" in missing_key.stderr
    assert keys(cwd=tmp_path).returncode == 2  # `amphora keys` alone: which command?


def test_rotate_on_a_database_sealed_with_other_keys_is_refused(tmp_path):
    ours = amphora.Keyring.create(tmp_path / "ours.keyring", PASSPHRASE, CHEAP)
    theirs = amphora.Keyring.create(tmp_path / "theirs.keyring", PASSPHRASE, CHEAP)
    with amphora.open(f"sqlite:///{tmp_path / 'data.db'}", keyring=theirs) as db:
        with db.transaction() as conn:
            conn.root()["x"] = 1
    line = error_line(keys("rotate", "sqlite:///data.db", "--keyring", "ours.keyring",
                           cwd=tmp_path, env={"AMPHORA_PASSPHRASE": PASSPHRASE}))
    assert "failed authentication" in line
    assert amphora.Keyring.unlock(ours.path, PASSPHRASE).key_ids == [1]  # no key added


ON_TERMINAL = """
import os, sys
terminal = os.open(sys.argv[1], os.O_RDWR)  # the first terminal a session opens: its own
for fd in (0, 1, 2):
    os.dup2(terminal, fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def at_a_terminal(args: list[str], answers: list[str], cwd: Path) -> tuple[int, str]:
    """``amphora keys ARGS`` on a pseudo-terminal, each answer typed after a prompt
    (output ending in ": "); its exit status and everything the terminal showed."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("AMPHORA_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC),
                                                             os.environ.get("PYTHONPATH")]))
    terminal, slave = os.openpty()
    # The command's own session, the pseudo-terminal its controlling terminal (getpass
    # reads /dev/tty); no fork of this (threaded) process.
    command = subprocess.Popen(
        [sys.executable, "-c", ON_TERMINAL, os.ttyname(slave), sys.executable, "-m",
         "amphora", "keys", *args], cwd=cwd, env=environment, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shown, pending = b"", list(answers)
    deadline = time.monotonic() + 60
    try:
        # The slave stays open here until the command ends, so reads never fail early.
        while command.poll() is None or select.select([terminal], [], [], 0)[0]:
            if time.monotonic() > deadline:
                command.kill()
                raise AssertionError(f"the command hung; it showed {shown!r}")
            if not select.select([terminal], [], [], 0.05)[0]:
                continue
            shown += os.read(terminal, 1024)
            if pending and shown.endswith(b": "):  # a prompt, echo already off
                os.write(terminal, pending.pop(0).encode() + b"\n")
    finally:
        os.close(slave)
        os.close(terminal)
    return command.wait(60), shown.decode()


def test_create_asks_for_the_passphrase_twice_at_a_terminal(tmp_path):
    status, shown = at_a_terminal(["create", "app.keyring", *CHEAP_OPTIONS],
                                  ["typed words", "typed words"], tmp_path)
    assert status == 0, shown
    assert "Passphrase for app.keyring: " in shown and "The passphrase again: " in shown
    assert "typed words" not in shown  # not echoed
    amphora.Keyring.unlock(tmp_path / "app.keyring", "typed words")


def test_two_different_passphrases_at_the_terminal_create_nothing(tmp_path):
    status, shown = at_a_terminal(["create", "app.keyring", *CHEAP_OPTIONS],
                                  ["typed words", "typo words"], tmp_path)
    assert status == 2 and "the two passphrases differ" in shown
    assert not (tmp_path / "app.keyring").exists()


def test_pack_collects_the_garbage_of_an_encrypted_database_with_its_keyring(
        tmp_path, keyring, passphrase_file):
    from persistent.mapping import PersistentMapping
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}", keyring=keyring)
    with db.transaction() as conn:
        conn.root.kept = PersistentMapping(name="kept")
        conn.root.dropped = PersistentMapping(name="dropped")
    with db.transaction() as conn:
        del conn.root.dropped
    db.close()
    # Without the keys, garbage cannot be found: one clear error, nothing changed.
    line = error_line(amphora_command("pack", "sqlite:///app.db", cwd=tmp_path))
    assert "is encrypted" in line and "--keyring" in line and "--no-gc" in line
    storage = amphora.open_storage(f"sqlite:///{tmp_path / 'app.db'}")
    assert len(storage) == 3
    storage.close()
    done = amphora_command("pack", "sqlite:///app.db", "--keyring", str(keyring.path),
                           "--passphrase-file", str(passphrase_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "objects 3 -> 2" in done.stdout
    db = amphora.open(f"sqlite:///{tmp_path / 'app.db'}",
                      keyring=amphora.Keyring.unlock(keyring.path, PASSPHRASE))
    with db.transaction() as conn:
        assert conn.root.kept["name"] == "kept" and not hasattr(conn.root, "dropped")
    db.close()
