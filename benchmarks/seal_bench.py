"""What sealing and opening one record costs in the encryption layer, per record.

Run from the repository root::

    .venv/bin/python benchmarks/seal_bench.py
    .venv/bin/python benchmarks/seal_bench.py --size 300 --records 1000

``EncryptedStorage`` (over a memory storage, nothing stored) seals ``--records`` records of
``--size`` random bytes as one commit's, then opens them: **together** (they share one
subkey, derived once: records read back in the groups they were written in) and
**scattered** (each sealed by a call of its own, so that opening each derives its subkey:
the worst case, every object of a read last written by a different commit). Beside them,
the cipher calls alone for the same padded size: AES-256-GCM (what the layer uses) and
AES-256-GCM-SIV (the nonce-misuse-resistant alternative, which derives keys per record
inside the cipher). Reported: microseconds per record, the best of ``--repeat`` timings.
A benchmark, not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import amphora  # noqa: E402
from amphora.crypto.keyring import KdfParameters  # noqa: E402
from amphora.storage.encrypted import RECORD, EncryptedStorage, padded_size  # noqa: E402
from amphora.utils import p64, z64  # noqa: E402


def best(function, number: int, repeat: int) -> float:
    """Seconds per call of ``function``, the best of ``repeat`` runs of ``number``."""
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=300, help="bytes of a record")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory() as directory:
        keyring = amphora.Keyring.create(Path(directory) / "bench.keyring", "benchmark",
                                         KdfParameters(1, 1, 1024))
        storage = EncryptedStorage(amphora.MemoryStorage(), keyring, seen_file=False)
        tid = p64(1 << 60)
        plains = {p64(i): os.urandom(args.size) for i in range(1, n + 1)}
        bases = dict.fromkeys(plains, z64)
        together = storage._seal_many(RECORD, tid, plains, bases)
        scattered = {oid: storage._seal(plain, RECORD, oid, tid, z64)
                     for oid, plain in plains.items()}

        def open_all(sealed):
            def run():
                storage._subkeys.clear()  # every run starts as a new client would
                for oid, data in sealed.items():
                    storage._open(data, RECORD, oid, tid)
            return run

        rows = [
            ("seal, one commit's records", best(
                lambda: storage._seal_many(RECORD, tid, plains, bases), 3, args.repeat) / n),
            ("open, records sealed together", best(open_all(together), 3, args.repeat) / n),
            ("open, scattered (a subkey each)", best(open_all(scattered), 3, args.repeat) / n),
        ]
        size = padded_size(args.size)
        key, nonce, plain, header = os.urandom(32), os.urandom(12), os.urandom(size), bytes(68)
        for name, cipher in (("AES-256-GCM", AESGCM(key)), ("AES-256-GCM-SIV", AESGCMSIV(key))):
            sealed = cipher.encrypt(nonce, plain, header)
            rows.append((f"{name} encrypt alone", best(
                lambda: cipher.encrypt(nonce, plain, header), 1000, args.repeat)))
            rows.append((f"{name} decrypt alone", best(
                lambda: cipher.decrypt(nonce, sealed, header), 1000, args.repeat)))
        storage.close()
    print(f"{n:,} records of {args.size} bytes (padded to {padded_size(args.size)}), "
          f"microseconds per record, best of {args.repeat}")
    for name, seconds in rows:
        print(f"  {name:<34} {seconds * 1e6:7.2f}")


if __name__ == "__main__":
    main()
