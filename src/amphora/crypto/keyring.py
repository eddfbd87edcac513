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

**Keys added by another process.** :meth:`Keyring.add_key` (run by ``amphora keys
rotate``, say) writes the file whole and renames it over the old one. A running process
keeps the key-encryption key in memory and learns of the change with :meth:`refresh`: a
``stat`` of the file (inode, size, modification time) and, if it changed, a re-read that
unwraps the keys again. :class:`~amphora.storage.encrypted.EncryptedStorage` refreshes at
every commit, before sealing, so that its new records use the new current key, and when a
record names a key it does not hold. A file re-wrapped under another passphrase
(``change_passphrase`` in another process) cannot be read with the key-encryption key in
memory: the process goes on with the keys it holds, and one that needs a key it does not
hold says to unlock the keyring again.

Changes to a keyring (:meth:`~Keyring.add_key`, :meth:`~Keyring.retire_key`,
:meth:`~Keyring.change_passphrase`) re-read the file first, so that a key another process
added is kept; two processes changing one keyring at the very same moment are not
serialized (the last rename wins), so changes are made by one command at a time.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from amphora.errors import KeyringError

__all__ = ["Keyring", "KdfParameters", "KeyringSummary"]

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


@dataclass(frozen=True)
class KeyringSummary:
    """What a keyring file says without its passphrase: the ids of its keys and when
    each was made (``created``: id -> ISO-8601 UTC time), the current one, the cost of
    its key derivation. Never a key."""

    path: Path
    created: dict[int, str]
    current: int
    cost: KdfParameters


class Keyring:
    """The unlocked data keys of one keyring file.

    Make one with :meth:`create` (a new file holding one new data key) or :meth:`unlock`
    (an existing file). ``current_key_id`` names the key new records are sealed with;
    :meth:`key` gives any key by id. :meth:`add_key` makes a new current key,
    :meth:`retire_key` removes an old one, :meth:`refresh` learns of keys another process
    added. Safe to share between threads.
    """

    def __init__(self, path: Path, keys: dict[int, bytes], current: int, kek: bytes,
                 salt: bytes, cost: KdfParameters, created: dict[int, str]):
        self.path = Path(path).absolute()  # the same file after a change of directory
        self._keys = keys
        self._current = current
        self._kek = kek
        self._salt = salt
        self._cost = cost
        self._created = created
        self._lock = threading.RLock()
        self._stamp = _stamp(path)
        #: why a change to the file could not be read (None: the keys are the file's)
        self._stale: str | None = None

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
        parsed = _parse(path, _read(path))
        kek = _derive(passphrase, parsed.salt, parsed.summary.cost)
        keys = _unwrap_all(path, kek, parsed.wrapped)
        return cls(path, keys, parsed.summary.current, kek, parsed.salt, parsed.summary.cost,
                   parsed.summary.created)

    @staticmethod
    def summary(path: str | os.PathLike) -> KeyringSummary:
        """What the keyring file at ``path`` says without being unlocked (no passphrase
        is needed, no key is read)."""
        path = Path(path)
        return _parse(path, _read(path)).summary

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
            stale = f"; {self._stale}" if self._stale else ""
            raise KeyringError(f"the keyring {self.path} holds no key {key_id} "
                               f"(it holds {self.key_ids}){stale}") from None

    def created(self, key_id: int) -> str:
        """When the key ``key_id`` was made (ISO 8601, UTC; "" if the file does not say)."""
        self.key(key_id)
        return self._created.get(key_id, "")

    def add_key(self) -> int:
        """Make a new random data key, the current one from now on, and save the file
        (atomically: the old file or the new one, whole). Returns its id, one more than
        the highest id the keyring ever held (a retired id is not reused while a higher
        one exists). Records sealed with the older keys still open."""
        with self._lock:
            self._reload(strict=True)
            key_id = max(self._keys) + 1
            if key_id > _MAX_KEY_ID:
                raise KeyringError(f"{self.path}: no key id is left")
            keys = dict(self._keys)
            keys[key_id] = os.urandom(KEY_BYTES)
            created = dict(self._created)
            created[key_id] = _now()
            self._keys, self._created, self._current = keys, created, key_id
            self._save()
            return key_id

    def retire_key(self, key_id: int) -> None:
        """Remove the key ``key_id`` from the keyring file (and this keyring): records
        sealed with it no longer open anywhere. The current key is refused.

        This does not look at any database: use
        :func:`amphora.crypto.rotation.retire`, which first checks that no stored
        revision is still sealed with the key."""
        with self._lock:
            self._reload(strict=True)
            self.key(key_id)
            if key_id == self._current:
                raise KeyringError(f"key {key_id} is the current key of {self.path}: new "
                                   "records are sealed with it (add a key first)")
            keys = {i: key for i, key in self._keys.items() if i != key_id}
            created = {i: when for i, when in self._created.items() if i != key_id}
            self._keys, self._created = keys, created
            self._save()

    # -- changes made by other processes -------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Re-read the file if it changed since this keyring last read or wrote it (one
        ``stat``; ``force``: whether or not). True if the keys or the current key
        changed. A file this keyring cannot read any more (re-wrapped under another
        passphrase, removed, damaged) leaves the keys as they are: the error is kept and
        named when a key is missing (:meth:`key`)."""
        stamp = _stamp(self.path)
        if stamp == self._stamp and not force:
            return False
        with self._lock:
            before = (self._current, self.key_ids)
            try:
                self._reload(strict=False)
            except KeyringError as exc:
                self._stale = f"its file changed and could not be read again: {exc}"
                self._stamp = stamp  # not again at every commit; a new change retries
                return False
            return (self._current, self.key_ids) != before

    def _reload(self, strict: bool) -> None:
        """Take the file's keys and current key. Raises KeyringError if the file cannot
        be read with the key-encryption key held (``strict``: also if it is missing)."""
        stamp = _stamp(self.path)
        if stamp is None and not strict:
            raise KeyringError(f"{self.path} is gone")
        parsed = _parse(self.path, _read(self.path))
        if parsed.salt != self._salt or parsed.summary.cost != self._cost:
            raise KeyringError(f"{self.path} was re-wrapped under another passphrase "
                               "since it was unlocked here: unlock it again")
        keys = _unwrap_all(self.path, self._kek, parsed.wrapped)
        self._keys, self._created = keys, parsed.summary.created
        self._current = parsed.summary.current
        self._stamp, self._stale = stamp, None

    # -- the passphrase ---------------------------------------------------------------
    def change_passphrase(self, old: str | bytes, new: str | bytes) -> None:
        """Wrap the data keys under ``new`` (with a new salt) instead of ``old``. The
        keys themselves do not change, so nothing sealed with them needs re-sealing.
        ``old`` must be the passphrase the file is wrapped under now."""
        with self._lock:
            if _derive(old, self._salt, self._cost) != self._kek:
                raise KeyringError(f"wrong passphrase for the keyring {self.path}")
            self._reload(strict=True)
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
            self._stamp = _stamp(self.path)
        except FileExistsError:
            os.unlink(temporary)
            raise KeyringError(f"{self.path} already exists") from None
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


@dataclass(frozen=True)
class _Parsed:
    summary: KeyringSummary
    salt: bytes
    wrapped: dict[int, Any]  # id -> the wrapped key as the file has it


def _parse(path: Path, document: dict[str, Any]) -> _Parsed:
    try:
        kdf = document["kdf"]
        if kdf.get("name") != "argon2id":
            raise KeyringError(f"{path}: unknown key derivation {kdf.get('name')!r}")
        cost = KdfParameters(int(kdf["iterations"]), int(kdf["lanes"]),
                             int(kdf["memory_cost"]))
        salt = base64.b64decode(kdf["salt"], validate=True)
        entries = {_key_id(entry["id"]): entry for entry in document["keys"]}
        current = _key_id(document["current"])
        wrapped = {key_id: entry["wrapped"] for key_id, entry in entries.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise KeyringError(f"{path} is not a readable keyring: {exc!r}") from None
    if current not in entries:
        raise KeyringError(f"{path}: the current key {current} is not in the keyring")
    created = {key_id: str(entry.get("created", "")) for key_id, entry in entries.items()}
    return _Parsed(KeyringSummary(path, created, current, cost), salt, wrapped)


def _unwrap_all(path: Path, kek: bytes, wrapped: dict[int, Any]) -> dict[int, bytes]:
    keys = {}
    for key_id, blob in wrapped.items():
        try:
            keys[key_id] = _unwrap(kek, key_id, blob)
        except InvalidTag:
            raise KeyringError(f"wrong passphrase for the keyring {path} (or the file "
                               "was altered)") from None
        except (TypeError, ValueError) as exc:
            raise KeyringError(f"{path}: key {key_id} is unreadable: {exc!r}") from None
    return keys


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells that the file changed: a save renames a new file over it (a new inode)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


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
