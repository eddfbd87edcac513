"""Keyrings: random data keys wrapped under a passphrase with Argon2id."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

import amphora
from amphora.crypto.keyring import KdfParameters

from .conftest import CHEAP, PASSPHRASE


def test_unlocking_gives_back_the_keys_created(tmp_path):
    created = amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    unlocked = amphora.Keyring.unlock(tmp_path / "k", PASSPHRASE)
    assert unlocked.key_ids == created.key_ids == [1]
    assert unlocked.current_key_id == 1
    assert unlocked.key(1) == created.key(1)
    assert len(unlocked.key(1)) == 32


def test_two_keyrings_have_different_keys_and_salts(tmp_path):
    one = amphora.Keyring.create(tmp_path / "one", PASSPHRASE, CHEAP)
    two = amphora.Keyring.create(tmp_path / "two", PASSPHRASE, CHEAP)
    assert one.key(1) != two.key(1)
    salts = [json.loads((tmp_path / name).read_text())["kdf"]["salt"] for name in ("one", "two")]
    assert salts[0] != salts[1]


def test_a_wrong_passphrase_is_refused_clearly(tmp_path):
    amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    with pytest.raises(amphora.KeyringError, match="wrong passphrase"):
        amphora.Keyring.unlock(tmp_path / "k", "Correct horse battery staple")


def test_the_file_holds_no_key_in_the_clear(tmp_path):
    keyring = amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    raw = (tmp_path / "k").read_bytes()
    key = keyring.key(1)
    for form in (key, key.hex().encode(), base64.b64encode(key), PASSPHRASE.encode()):
        assert form not in raw
    document = json.loads(raw)
    assert document["kdf"] == {"name": "argon2id", "salt": document["kdf"]["salt"],
                               "iterations": 1, "lanes": 1, "memory_cost": 1024}
    assert len(base64.b64decode(document["kdf"]["salt"])) == 16
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert repr(keyring).endswith("keys=[1] current=1>")


def test_changing_the_passphrase_rewraps_the_same_keys(tmp_path):
    keyring = amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    before = (tmp_path / "k").read_text()
    keyring.change_passphrase(PASSPHRASE, "a new passphrase")
    after = (tmp_path / "k").read_text()
    assert json.loads(after)["kdf"]["salt"] != json.loads(before)["kdf"]["salt"]
    with pytest.raises(amphora.KeyringError, match="wrong passphrase"):
        amphora.Keyring.unlock(tmp_path / "k", PASSPHRASE)
    assert amphora.Keyring.unlock(tmp_path / "k", "a new passphrase").key(1) == keyring.key(1)


def test_changing_the_passphrase_needs_the_old_one(tmp_path):
    keyring = amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(amphora.KeyringError, match="wrong passphrase"):
        keyring.change_passphrase("not it", "a new passphrase")
    assert (tmp_path / "k").read_bytes() == before


def test_a_wrapped_key_moved_to_another_id_does_not_unwrap(tmp_path):
    amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    document = json.loads((tmp_path / "k").read_text())
    document["keys"][0]["id"] = document["current"] = 2
    (tmp_path / "k").write_text(json.dumps(document))
    with pytest.raises(amphora.KeyringError):
        amphora.Keyring.unlock(tmp_path / "k", PASSPHRASE)


def test_create_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "k").write_text("precious")
    with pytest.raises(amphora.KeyringError, match="already exists"):
        amphora.Keyring.create(tmp_path / "k", PASSPHRASE, CHEAP)
    assert (tmp_path / "k").read_text() == "precious"


@pytest.mark.parametrize("content", ["", "{}", "not json", '{"format": "amphora-keyring"}'])
def test_a_file_that_is_not_a_keyring_is_refused(tmp_path, content):
    (tmp_path / "k").write_text(content)
    with pytest.raises(amphora.KeyringError):
        amphora.Keyring.unlock(tmp_path / "k", PASSPHRASE)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(amphora.KeyringError, match="no keyring at"):
        amphora.Keyring.unlock(tmp_path / "missing", PASSPHRASE)


def test_bad_parameters_and_passphrases_are_refused(tmp_path):
    with pytest.raises(amphora.KeyringError, match="memory_cost"):
        KdfParameters(iterations=1, lanes=4, memory_cost=16)
    with pytest.raises(amphora.KeyringError, match="passphrase"):
        amphora.Keyring.create(tmp_path / "k", "", CHEAP)
    assert not (tmp_path / "k").exists()


def test_an_unknown_key_id_is_named(keyring):
    with pytest.raises(amphora.KeyringError, match="no key 7"):
        keyring.key(7)
