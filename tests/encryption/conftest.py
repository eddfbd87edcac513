"""Keyrings for the encryption tests: Argon2id at its cheapest (the keys it wraps are
random either way), so that making one takes milliseconds."""
from __future__ import annotations

import pytest

import amphora
from amphora.crypto.keyring import KdfParameters

CHEAP = KdfParameters(iterations=1, lanes=1, memory_cost=1024)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def keyring(tmp_path) -> amphora.Keyring:
    return amphora.Keyring.create(tmp_path / "app.keyring", PASSPHRASE, CHEAP)
