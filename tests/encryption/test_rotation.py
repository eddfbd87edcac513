"""Key rotation: a new data key for new writes, the records sealed again with it online
while writers commit, resumed after a kill, and old keys retired once nothing needs them.

The writers and ``amphora keys rotate`` are real processes; what the rotation did is read
from the wrapped storage's records as stored: the key id in each record's header.
"""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serverprocess  # tests/server/serverprocess.py
from persistent.list import PersistentList

import amphora
from amphora.crypto.rotation import key_usage, retire, rotate
from amphora.storage.encrypted import EncryptedStorage, sealed_key_id
from amphora.uri import open_storage
from amphora.utils import maxtid

from .conftest import CHEAP, PASSPHRASE

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rotation_workers import Counter  # noqa: E402  (the class the writers' records name)

SRC = HERE.parents[1] / "src"
WORKERS = HERE / "rotation_workers.py"


def environment() -> dict[str, str]:
    env = dict(os.environ, AMPHORA_PASSPHRASE=PASSPHRASE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def amphora_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amphora", *args], env=environment(),
                          capture_output=True, text=True, timeout=120)


def counters_database(path: Path, keyring: amphora.Keyring, count: int) -> None:
    with amphora.open(f"sqlite:///{path}", keyring=keyring) as db:
        with db.transaction() as conn:
            conn.root()["counters"] = PersistentList(Counter() for _ in range(count))


def current_key_ids(path: Path) -> dict[bytes, int | None]:
    """oid -> the key id the current revision of each object names, as stored."""
    storage = open_storage(f"sqlite:///{path}", read_only=True)
    try:
        oids = {record.oid for txn in storage.iterator() for record in txn}
        return {oid: sealed_key_id(data)
                for oid, (data, _, _) in storage.load_many(oids, maxtid).items()}
    finally:
        storage.close()


def counter_total(uri: str, keyring: amphora.Keyring) -> tuple[int, int]:
    """(how many counters, the sum of their values), read through the keyring."""
    with amphora.open(uri, keyring=keyring) as db:
        with db.transaction() as conn:
            counters = conn.root()["counters"]
            return len(counters), sum(counter.value for counter in counters)


def wait_for(paths: list[Path], processes: list[subprocess.Popen]) -> None:
    """Until every path exists (a writer's first commit), or fail if a writer died."""
    while not all(path.exists() for path in paths):
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a writer stopped early: {process.stderr.read()}")
        time.sleep(0.02)


def assert_no_key_in_the_clear(keyring: amphora.Keyring) -> None:
    raw = keyring.path.read_bytes()
    for key_id in keyring.key_ids:
        key = keyring.key(key_id)
        for form in (key, key.hex().encode(), base64.b64encode(key)):
            assert form not in raw


# -- keys added by another process ------------------------------------------------------

def test_an_added_key_becomes_current_and_is_saved(keyring):
    assert keyring.add_key() == 2
    assert (keyring.key_ids, keyring.current_key_id) == ([1, 2], 2)
    again = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    assert (again.key_ids, again.current_key_id) == ([1, 2], 2)
    assert again.key(2) == keyring.key(2) != keyring.key(1)
    assert keyring.created(2) >= keyring.created(1)
    assert_no_key_in_the_clear(again)


def test_a_running_keyring_learns_of_a_key_added_elsewhere(keyring):
    other = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    assert other.refresh() is False  # the file did not change: nothing re-read
    keyring.add_key()
    assert other.refresh() is True
    assert (other.current_key_id, other.key(2)) == (2, keyring.key(2))


def test_an_encrypted_storage_seals_with_a_key_added_elsewhere_from_its_next_commit(
        tmp_path, keyring):
    path = tmp_path / "data.db"
    writer_keyring = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    with amphora.open(f"sqlite:///{path}", keyring=writer_keyring) as db:
        with db.transaction() as conn:
            conn.root()["before"] = Counter()
        keyring.add_key()  # as `amphora keys rotate` in another process would
        with db.transaction() as conn:
            conn.root()["after"] = Counter()
        with db.transaction() as conn:
            before_oid, after_oid = conn.root()["before"]._p_oid, conn.root()["after"]._p_oid
    keys = current_key_ids(path)
    assert (keys[before_oid], keys[after_oid]) == (1, 2)


def test_a_record_sealed_with_a_key_added_elsewhere_opens(tmp_path, keyring):
    path = tmp_path / "data.db"
    reader_keyring = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    reader = EncryptedStorage(open_storage(f"sqlite:///{path}"), reader_keyring)
    keyring.add_key()
    with amphora.open(f"sqlite:///{path}", keyring=keyring) as db:
        with db.transaction() as conn:
            conn.root()["x"] = 1
    try:
        data, _, _ = reader.loadBefore(b"\0" * 8, maxtid)  # sealed with key 2
        assert sealed_key_id(reader.storage.loadBefore(b"\0" * 8, maxtid)[0]) == 2
        assert data
    finally:
        reader.close()


def test_the_current_key_and_unknown_keys_cannot_be_retired(keyring):
    with pytest.raises(amphora.KeyringError, match="current key"):
        keyring.retire_key(1)
    with pytest.raises(amphora.KeyringError, match="holds no key 7"):
        keyring.retire_key(7)
    assert amphora.Keyring.unlock(keyring.path, PASSPHRASE).key_ids == [1]


# -- rotation ---------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["sqlite", "server"])
def test_rotation_under_load_seals_every_record_with_the_new_key_and_loses_nothing(
        tmp_path, keyring, via):
    path = tmp_path / "data.db"
    counters_database(path, keyring, 120)
    server = None
    if via == "server":
        server = serverprocess.ServerProcess(f"sqlite:///{path}")
        uri = f"amphora://{server.address}"
    else:
        uri = f"sqlite:///{path}"
    stop = tmp_path / "stop"
    writers, ready = [], []
    try:
        for name in ("ann", "bob", "cid"):
            ready.append(tmp_path / f"{name}.ready")
            writers.append(subprocess.Popen(
                [sys.executable, str(WORKERS), "write", uri, str(keyring.path),
                 name, str(ready[-1]), str(stop)],
                env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait_for(ready, writers)  # every writer is committing
        rotated = amphora_command("keys", "rotate", uri, "--keyring", str(keyring.path),
                                  "--batch", "5")
        stop.touch()  # each writer commits five more transactions, then stops
        outputs = [writer.communicate(timeout=120) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
        if server is not None:
            server.stop()
    assert rotated.returncode == 0, rotated.stderr
    assert f"{uri}: added key 2;" in rotated.stdout
    assert all(writer.returncode == 0 for writer in writers), outputs
    increments = sum(int(out.split()[0]) for out, _ in outputs)

    keys = current_key_ids(path)
    assert len(keys) == 122  # the root, the list, 120 counters
    assert set(keys.values()) == {2}
    assert counter_total(f"sqlite:///{path}", keyring) == (120, increments)
    unlocked = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    assert (unlocked.key_ids, unlocked.current_key_id) == ([1, 2], 2)
    assert_no_key_in_the_clear(unlocked)


def test_a_rotation_killed_midway_is_resumed_by_the_next_run(tmp_path, keyring):
    path = tmp_path / "data.db"
    counters_database(path, keyring, 200)
    child = subprocess.run([sys.executable, str(WORKERS), "rotate-and-die",
                            f"sqlite:///{path}", str(keyring.path), "60"],
                           env=environment(), capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    before = list(current_key_ids(path).values())
    done, left = before.count(2), before.count(1)
    assert done == 60 and left == 142  # six batches of ten committed, then killed

    rerun = amphora_command("keys", "rotate", f"sqlite:///{path}", "--keyring",
                            str(keyring.path))
    assert rerun.returncode == 0, rerun.stderr
    assert "finished the rotation to key 2" in rerun.stdout
    assert f"{left} records sealed again" in rerun.stdout
    assert f"{done} already sealed with it" in rerun.stdout
    assert set(current_key_ids(path).values()) == {2}
    assert amphora.Keyring.unlock(keyring.path, PASSPHRASE).key_ids == [1, 2]  # none added
    assert counter_total(f"sqlite:///{path}", keyring) == (200, 0)


def test_a_finished_rotation_run_again_adds_the_next_key(tmp_path, keyring):
    path = tmp_path / "data.db"
    counters_database(path, keyring, 10)
    storage = EncryptedStorage(open_storage(f"sqlite:///{path}"), keyring)
    try:
        first = rotate(storage)
        second = rotate(storage, batch=3)
    finally:
        storage.close()
    assert (first.key_id, first.added, first.resealed, first.already) == (2, True, 12, 0)
    assert (second.key_id, second.added, second.resealed, second.transactions) == \
        (3, True, 12, 4)
    assert set(current_key_ids(path).values()) == {3}


def test_retiring_is_refused_while_a_revision_needs_the_key_and_works_after_pack(
        tmp_path, keyring):
    path = tmp_path / "data.db"
    uri = f"sqlite:///{path}"
    counters_database(path, keyring, 30)
    assert amphora_command("keys", "rotate", uri, "--keyring", str(keyring.path)
                           ).returncode == 0

    refused = amphora_command("keys", "retire", uri, "--keyring", str(keyring.path),
                              "--key", "1")
    assert refused.returncode == 2
    # the root created, then written with the list; the list; the 30 counters
    assert "key 1 still seals 33 revision(s) and the metadata of 2 transaction(s)" \
        in refused.stderr and "pack" in refused.stderr
    assert amphora.Keyring.unlock(keyring.path, PASSPHRASE).key_ids == [1, 2]
    current = amphora_command("keys", "retire", uri, "--keyring", str(keyring.path),
                              "--key", "2")
    assert current.returncode == 2 and "current key" in current.stderr

    with amphora.open(uri, keyring=keyring) as db:
        db.pack()  # to now, through the keyring: old revisions and emptied transactions go
    storage = EncryptedStorage(open_storage(uri), keyring)
    try:
        assert 1 not in key_usage(storage).records
        retire(storage, 1)
    finally:
        storage.close()
    unlocked = amphora.Keyring.unlock(keyring.path, PASSPHRASE)
    assert (unlocked.key_ids, unlocked.current_key_id) == ([2], 2)
    assert counter_total(uri, unlocked) == (30, 0)  # everything still opens
    info = amphora_command("keys", "info", str(keyring.path))
    assert info.returncode == 0 and "\n     1  created" not in info.stdout
