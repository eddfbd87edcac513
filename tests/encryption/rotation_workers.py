"""The rotation tests' other processes.

``python rotation_workers.py write URI KEYRING NAME READY STOP``: a writer. It increments counters of the database at ``URI`` (``root["counters"]``, a list of
:class:`Counter`), three at a time, one transaction each, retrying on conflicts; touches
``READY`` after its first commit; once ``STOP`` exists it commits five more transactions
(after a rotation: with the new key, learned from the keyring file) and prints how many
increments it committed.

``python rotation_workers.py rotate-and-die URI KEYRING AFTER``: a rotation in batches of
ten, killed (SIGKILL, no clean-up) once ``AFTER`` objects are done.

The passphrase is in ``AMPHORA_PASSPHRASE``.
"""
from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

from persistent import Persistent
from transaction.interfaces import TransientError

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Counter(Persistent):
    def __init__(self) -> None:
        self.value = 0


def write(uri: str, keyring_path: str, name: str, ready: str, stop: str) -> None:
    import amphora

    keyring = amphora.Keyring.unlock(keyring_path, os.environ["AMPHORA_PASSPHRASE"])
    rng = random.Random(name)
    increments = conflicts = after_stop = 0
    with amphora.open(uri, keyring=keyring) as db:
        while after_stop < 5:
            stopping = os.path.exists(stop)
            try:
                with db.transaction() as conn:
                    counters = conn.root()["counters"]
                    for index in rng.sample(range(len(counters)), 3):
                        counters[index].value += 1
            except TransientError:
                conflicts += 1
                continue
            increments += 3
            if increments == 3:
                Path(ready).touch()
            after_stop += stopping
    print(increments, conflicts)


def rotate_and_die(uri: str, keyring_path: str, after: str) -> None:
    import amphora
    from amphora.crypto.rotation import rotate
    from amphora.storage.encrypted import EncryptedStorage
    from amphora.uri import open_storage

    keyring = amphora.Keyring.unlock(keyring_path, os.environ["AMPHORA_PASSPHRASE"])
    storage = EncryptedStorage(open_storage(uri), keyring)

    def progress(done: int, total: int) -> None:
        if done >= int(after):
            os.kill(os.getpid(), signal.SIGKILL)
    rotate(storage, batch=10, progress=progress)


if __name__ == "__main__":
    {"write": write, "rotate-and-die": rotate_and_die}[sys.argv[1]](*sys.argv[2:])
