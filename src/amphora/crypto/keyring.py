"""A keyring: the data keys of encrypted databases, kept under a passphrase.

A keyring file is JSON. It holds *data keys* (random 256-bit keys that seal records),
each *wrapped*: encrypted with AES-256-GCM under a *key-encryption key* derived from the
passphrase with Argon2id. The file never holds a key in the clear; changing the
passphrase re-wraps the data keys and leaves them (and so every record) unchanged::

    {"format": "amphora-keyring", "version": 1,
     "kdf": {"name": "argon2id", "salt": "<base64, 16 random bytes>", "iterations": 3,
             "lanes": 4, "memory_cost": 65536},
     "current": 1,
     "keys": [{"id": 1, "created": "2026-12-06T08:40:00+00:00",
               "wrapped": "<base64: 12-byte nonce, then the key sealed with its tag>"}]}

Each data key has an id (a positive integer below 2**32) that every record names, so
that a keyring may hold old keys beside the one new records are sealed with
(``current``). A wrapped key's associated data is the format name and its id: a wrapped
key moved to another id does not unwrap.

A wrong passphrase fails to unwrap (the tag does not match) and raises
:class:`~amphora.errors.KeyringError`; so does a file that is not a keyring.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from amphora.errors import KeyringError

__all__ = ["Keyring", "KdfParameters"]

FORMAT = "amphora-keyring"
VERSION = 1
KEY_BYTES = 32
_MAX_KEY_ID = (1 << 32) - 1


@dataclass(frozen=True)
class KdfParameters:
    """Argon2id's cost: ``iterations`` passes over ``memory_cost`` KiB in ``lanes``
    lanes. The default is RFC 9106's second recommended option (64 MiB, 3 passes)."""

    iterations: int = 3
    lanes: int = 4
    memory_cost: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("iterations", "lanes", "memory_cost"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KeyringError(f"Argon2id {name} must be a positive integer, not {value!r}")
        if self.memory_cost < 8 * self.lanes:
            raise KeyringError(f"Argon2id memory_cost must be at least 8 KiB per lane "
                               f"({8 * self.lanes}), not {self.memory_cost}")


def _derive(passphrase: str | bytes, salt: bytes, cost: KdfParameters) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, bytes) or not passphrase:
        raise KeyringError("a passphrase must be a non-empty string")
    kdf = Argon2id(salt=salt, length=KEY_BYTES, iterations=cost.iterations, lanes=cost.lanes,
                   memory_cost=cost.memory_cost)
    return kdf.derive(passphrase)


def _associated(key_id: int) -> bytes:
    return f"{FORMAT} {VERSION} key {key_id}".encode("ascii")


def _wrap(kek: bytes, key_id: int, key: bytes) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, key, _associated(key_id))
    return base64.b64encode(nonce + sealed).decode("ascii")


def _unwrap(kek: bytes, key_id: int, wrapped: str) -> bytes:
    blob = base64.b64decode(wrapped, validate=True)
    key = AESGCM(kek).decrypt(blob[:12], blob[12:], _associated(key_id))
    if len(key) != KEY_BYTES:
        raise KeyringError(f"data key {key_id} is {len(key)} bytes, not {KEY_BYTES}")
    return key


class Keyring:
    """The unlocked data keys of one keyring file.

    Make one with :meth:`create` (a new file holding one new data key) or :meth:`unlock`
    (an existing file). ``current_key_id`` names the key new records are sealed with;
    :meth:`key` gives any key by id.
    """

    def __init__(self, path: Path, keys: dict[int, bytes], current: int, kek: bytes,
                 salt: bytes, cost: KdfParameters, created: dict[int, str]):
        self.path = path
        self._keys = keys
        self._current = current
        self._kek = kek
        self._salt = salt
        self._cost = cost
        self._created = created

    def __repr__(self) -> str:  # never the keys
        return f"<Keyring {str(self.path)!r} keys={self.key_ids} current={self._current}>"

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, passphrase: str | bytes,
               cost: KdfParameters | None = None) -> "Keyring":
        """A new keyring file at ``path`` with one random data key, wrapped under
        ``passphrase``. Refuses (:class:`KeyringError`) to replace an existing file."""
        path = Path(path)
        if path.exists():
            raise KeyringError(f"{path} already exists: a keyring is created once "
                               "(unlock it, or remove it first)")
        cost = cost or KdfParameters()
        salt = os.urandom(16)
        kek = _derive(passphrase, salt, cost)
        keyring = cls(path, {1: os.urandom(KEY_BYTES)}, 1, kek, salt, cost,
                      {1: _now()})
        keyring._save(exclusive=True)
        return keyring

    @classmethod
    def unlock(cls, path: str | os.PathLike, passphrase: str | bytes) -> "Keyring":
        """The keyring kept at ``path``, its keys unwrapped with ``passphrase``; a wrong
        passphrase or a damaged file raises :class:`KeyringError`."""
        path = Path(path)
        document = _read(path)
        try:
            kdf = document["kdf"]
            if kdf.get("name") != "argon2id":
                raise KeyringError(f"{path}: unknown key derivation {kdf.get('name')!r}")
            cost = KdfParameters(int(kdf["iterations"]), int(kdf["lanes"]),
                                 int(kdf["memory_cost"]))
            salt = base64.b64decode(kdf["salt"], validate=True)
            entries = {_key_id(entry["id"]): entry for entry in document["keys"]}
            current = _key_id(document["current"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{path} is not a readable keyring: {exc!r}") from None
        if current not in entries:
            raise KeyringError(f"{path}: the current key {current} is not in the keyring")
        kek = _derive(passphrase, salt, cost)
        keys = {}
        for key_id, entry in entries.items():
            try:
                keys[key_id] = _unwrap(kek, key_id, entry["wrapped"])
            except InvalidTag:
                raise KeyringError(f"wrong passphrase for the keyring {path} (or the file "
                                   "was altered)") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyringError(f"{path}: key {key_id} is unreadable: {exc!r}") from None
        created = {key_id: str(entry.get("created", "")) for key_id, entry in entries.items()}
        return cls(path, keys, current, kek, salt, cost, created)

    # -- keys -------------------------------------------------------------------------
    @property
    def key_ids(self) -> list[int]:
        return sorted(self._keys)

    @property
    def current_key_id(self) -> int:
        """The id of the key new records are sealed with."""
        return self._current

    def key(self, key_id: int) -> bytes:
        """The data key ``key_id``; :class:`KeyringError` if the keyring has none."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyringError(f"the keyring {self.path} holds no key {key_id} "
                               f"(it holds {self.key_ids})") from None

    # -- the passphrase ---------------------------------------------------------------
    def change_passphrase(self, old: str | bytes, new: str | bytes) -> None:
        """Wrap the data keys under ``new`` (with a new salt) instead of ``old``. The
        keys themselves do not change, so nothing sealed with them needs re-sealing.
        ``old`` must be the passphrase the file is wrapped under now."""
        if _derive(old, self._salt, self._cost) != self._kek:
            raise KeyringError(f"wrong passphrase for the keyring {self.path}")
        salt = os.urandom(16)
        self._kek, self._salt = _derive(new, salt, self._cost), salt
        self._save()

    # -- the file ---------------------------------------------------------------------
    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "kdf": {"name": "argon2id", "salt": base64.b64encode(self._salt).decode("ascii"),
                    "iterations": self._cost.iterations, "lanes": self._cost.lanes,
                    "memory_cost": self._cost.memory_cost},
            "current": self._current,
            "keys": [{"id": key_id, "created": self._created.get(key_id, ""),
                      "wrapped": _wrap(self._kek, key_id, key)}
                     for key_id, key in sorted(self._keys.items())],
        }

    def _save(self, exclusive: bool = False) -> None:
        """Write the file whole, readable by its owner only: a new file beside it,
        then renamed over it, so that a crash leaves the old file or the new one."""
        text = json.dumps(self._document(), indent=1) + "\n"
        directory = self.path.parent
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o600)
            if exclusive:
                os.link(temporary, self.path)  # fails if the file appeared meanwhile
                os.unlink(temporary)
            else:
                os.replace(temporary, self.path)
        except FileExistsError:
            os.unlink(temporary)
            raise KeyringError(f"{self.path} already exists") from None
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def _key_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_KEY_ID:
        raise ValueError(f"a key id is an integer from 1 to {_MAX_KEY_ID}, not {value!r}")
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyringError(f"no keyring at {path} (Keyring.create makes one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringError(f"cannot read the keyring {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise KeyringError(f"{path} is not an amphora keyring")
    if document.get("version") != VERSION:
        raise KeyringError(f"{path}: keyring version {document.get('version')!r} is not "
                           f"supported (this amphora reads version {VERSION})")
    return document


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
