"""Shared fixtures: every test that takes a storage runs once per storage kind.

A *storage kind* is one entry in :data:`STORAGE_KINDS`: a name (the pytest id), a function
that opens a storage of that kind in a directory, and how its URI is written. Adding a
storage or a wrapper stack (postgresql, client->memory, demo, encrypted->sqlite ...) to the
whole conformance suite is one more entry there.

What a kind can do is read from the storage itself, from the capability flags of the
storage contract (``supports_history``, ``supports_undo``, ``supports_pack``,
``is_remote``). A test that needs a capability calls ``make_storage.require("history")``,
which skips with a reason naming the kind and why it lacks it; nothing is skipped
silently.

Fixtures:

``make_storage``
    a :class:`StorageFactory` for the current kind: ``make_storage()`` opens a storage
    (closed after the test), ``make_storage.reopen(storage)`` closes and opens it again
    (the same object for kinds whose data lives in memory), ``make_storage.uri()`` is its
    ``amphora.open`` URI.
``storage``
    one open storage of the current kind.
``db``
    an :class:`amphora.DB` on ``storage``.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pgserver
import pytest
import transaction

import amphora

sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
import serverprocess  # noqa: E402  (tests/server/serverprocess.py)

CAPABILITIES = ("history", "undo", "pack", "remote")


@dataclass(frozen=True)
class StorageKind:
    """One way of making a storage, as the conformance suite sees it.

    ``open(path, **options)`` opens (or re-opens) the storage kept at ``path`` (a file
    name in the test's temporary directory; kinds that keep data in memory ignore it).
    ``uri(path)`` is the ``amphora.open`` URI of the same storage, or None when the kind
    has no URI. ``durable`` says whether data survives closing the storage and opening
    ``path`` again. ``notes`` explain, per capability, why the kind lacks it (used in skip
    reasons). ``module`` is imported first: when it cannot be imported, every test of the
    kind is skipped with the import error as the reason.
    """

    name: str
    open: Callable[..., Any]
    uri: Callable[[Path], str] | None
    durable: bool
    module: str = "amphora"
    options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _memory(path: Path, **options: Any) -> Any:
    from amphora.storage.memory import MemoryStorage
    return MemoryStorage(**options)


def _sqlite(path: Path, **options: Any) -> Any:
    from amphora.storage.sqlite import SQLiteStorage
    return SQLiteStorage(str(path), **options)


def postgres_server() -> pgserver.PostgresServer:
    """The session's PostgreSQL server (started on first use, stopped at the end); see
    :func:`pgserver.require` for when it is missing."""
    return pgserver.require()


def _postgresql_schema(path: Path) -> tuple[pgserver.PostgresServer, str]:
    """The server, and the schema of ``path``: one per test and name, dropped after the test."""
    server = postgres_server()
    schema = pgserver.schema_for(str(path))
    server.remember_schema(schema)
    return server, schema


def _postgresql(path: Path, **options: Any) -> Any:
    from amphora.storage.postgresql import PostgreSQLStorage
    server, schema = _postgresql_schema(path)
    return PostgreSQLStorage(server.dsn(), schema=schema, **options)


def _postgresql_uri(path: Path, **query: Any) -> str:
    return pgserver.schema_uri(str(path), **query)


def _base_file(path: Path) -> Path:
    """The SQLite file under a layer kept at ``path``: created (empty) if missing, then
    opened read-only by the layer, so that a write to the base would fail loudly."""
    from amphora.storage.sqlite import SQLiteStorage
    base = path.with_name(f"{path.stem}-base.db")
    if not base.exists():
        SQLiteStorage(str(base)).close()
    return base


def _demo(changes: str) -> Callable[..., Any]:
    """Opens a DemoStorage over a read-only SQLite base, its changes in memory or in
    SQLite (``changes``), optionally through a BeforeStorage (``before(sqlite)``) or with
    the base's records sealed (``encrypted(sqlite)``)."""
    def open_demo(path: Path, read_only: bool = False, **options: Any) -> Any:
        from amphora.storage.before import BeforeStorage
        from amphora.storage.demo import DemoStorage
        from amphora.storage.memory import MemoryStorage
        from amphora.storage.sqlite import SQLiteStorage
        base = SQLiteStorage(str(_base_file(path)), read_only=True)
        if changes == "sqlite":
            layer = SQLiteStorage(str(path), read_only=read_only)
        else:
            layer = MemoryStorage(read_only=read_only)
            if changes == "memory over before":
                base = BeforeStorage(base)
            elif changes == "memory over encrypted":
                sqlite_base = base
                base = _encrypted(lambda path: sqlite_base)(path)
        return DemoStorage(base, layer, **options)
    return open_demo


def _demo_uri(changes: str) -> Callable[[Path], str]:
    def uri(path: Path) -> str:
        base = f"sqlite:///{_base_file(path)}"
        if changes == "memory over before":
            # a view of now: a moment far ahead is capped to the last transaction
            return f"demo://?base=before://%3Fstorage%3D{base}%26before%3D0x7fffffffffffffff"
        layer = f"sqlite:///{path}" if changes == "sqlite" else "memory://"
        return f"demo://?base={base}&changes={layer}"
    return uri



def _client(served: str) -> Callable[..., Any]:
    """Opens a ClientStorage on the session's ``amphora serve`` process for ``served``
    (``memory`` or ``sqlite``), naming a storage of its own for ``path``."""
    def open_client(path: Path, **options: Any) -> Any:
        from amphora.storage.client import ClientStorage
        server = serverprocess.shared_server(served)
        return ClientStorage(server.host, server.port,
                             storage=serverprocess.storage_name(path), **options)
    return open_client


def _client_uri(served: str) -> Callable[[Path], str]:
    def uri(path: Path) -> str:
        server = serverprocess.shared_server(served)
        return f"amphora://{server.address}/{serverprocess.storage_name(path)}"
    return uri


def _served_schema(path: Path) -> str:
    """The storage name of ``path`` on the session's server of PostgreSQL schemas: the
    schema's name (dropped after the test)."""
    return _postgresql_schema(path)[1]


def _client_postgresql(path: Path, **options: Any) -> Any:
    """A ClientStorage on the session's ``amphora serve`` process of PostgreSQL schemas
    (``postgresql://...?schema={name}``), naming the test's schema for ``path``."""
    from amphora.storage.client import ClientStorage
    server = serverprocess.shared_server("postgresql")
    return ClientStorage(server.host, server.port, storage=_served_schema(path), **options)


def _client_postgresql_uri(path: Path) -> str:
    server = serverprocess.shared_server("postgresql")
    return f"amphora://{server.address}/{_served_schema(path)}"


def _encrypted(inner: Callable[..., Any]) -> Callable[..., Any]:
    """Opens an EncryptedStorage over a storage of another kind, with a keyring kept
    beside it (created on first use, with Argon2id at its cheapest: the data keys are
    random either way)."""
    def open_encrypted(path: Path, **options: Any) -> Any:
        from amphora.crypto.keyring import KdfParameters
        from amphora.storage.encrypted import EncryptedStorage
        keyring_path = path.with_name(f"{path.stem}.keyring")
        if keyring_path.exists():
            keyring = amphora.Keyring.unlock(keyring_path, "passphrase")
        else:
            keyring = amphora.Keyring.create(keyring_path, "passphrase",
                                             KdfParameters(iterations=1, lanes=1,
                                                           memory_cost=1024))
        resolve = options.pop("resolve_conflicts", True)
        return EncryptedStorage(inner(path, **options), keyring, resolve_conflicts=resolve)
    return open_encrypted


STORAGE_KINDS: list[StorageKind] = [
    StorageKind("memory", _memory, uri=lambda path: "memory://", durable=False,
                module="amphora.storage.memory"),
    StorageKind("sqlite", _sqlite, uri=lambda path: f"sqlite:///{path}", durable=True,
                module="amphora.storage.sqlite"),
    StorageKind("sqlite-history-free", _sqlite, durable=True, module="amphora.storage.sqlite",
                options={"keep_history": False},
                uri=lambda path: f"sqlite:///{path}?keep_history=false",
                notes={"history": "keep_history=false", "pack": "keep_history=false"}),
    StorageKind("postgresql", _postgresql, uri=_postgresql_uri, durable=True,
                module="amphora.storage.postgresql"),
    StorageKind("postgresql-history-free", _postgresql, durable=True,
                module="amphora.storage.postgresql", options={"keep_history": False},
                uri=lambda path: _postgresql_uri(path, keep_history="false"),
                notes={"history": "keep_history=false", "pack": "keep_history=false"}),
    StorageKind("demo(memory over sqlite)", _demo("memory"), uri=_demo_uri("memory"),
                durable=False, module="amphora.storage.demo"),
    StorageKind("demo(sqlite over sqlite)", _demo("sqlite"), uri=_demo_uri("sqlite"),
                durable=True, module="amphora.storage.demo"),
    # A BeforeStorage is read-only, and every test here writes: it runs under a layer,
    # as in the staging recipe. tests/layers/ runs the read checks on it over each kind.
    StorageKind("demo(memory over before(sqlite))", _demo("memory over before"),
                uri=_demo_uri("memory over before"), durable=False,
                module="amphora.storage.before"),
    # The staging recipe over an encrypted database: the changes stay in memory.
    StorageKind("demo(memory over encrypted(sqlite))", _demo("memory over encrypted"),
                uri=None, durable=False, module="amphora.storage.demo"),
    # A real `amphora serve` process per kind, for the session; each test its own storages.
    StorageKind("client->memory", _client("memory"), uri=_client_uri("memory"),
                durable=False, module="amphora.storage.client"),
    StorageKind("client->sqlite", _client("sqlite"), uri=_client_uri("sqlite"),
                durable=True, module="amphora.storage.client"),
    StorageKind("client->postgresql", _client_postgresql, uri=_client_postgresql_uri,
                durable=True, module="amphora.storage.postgresql"),
    # Sealed records over a storage: amphora.open(uri, keyring=...) has no URI form alone.
    StorageKind("encrypted->memory", _encrypted(_memory), uri=None, durable=False,
                module="amphora.storage.encrypted"),
    StorageKind("encrypted->sqlite", _encrypted(_sqlite), uri=None, durable=True,
                module="amphora.storage.encrypted"),
    StorageKind("encrypted->postgresql", _encrypted(_postgresql), uri=None, durable=True,
                module="amphora.storage.postgresql"),
    StorageKind("encrypted->client->sqlite", _encrypted(_client("sqlite")), uri=None,
                durable=True, module="amphora.storage.encrypted"),
]


class StorageFactory:
    """Opens storages of one kind inside one test's temporary directory, and closes
    them all when the test ends."""

    def __init__(self, kind: StorageKind, directory: Path):
        self.kind = kind
        self.directory = directory
        self._opened: list[Any] = []
        self._paths: dict[int, Path] = {}

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def durable(self) -> bool:
        return self.kind.durable

    def path(self, name: str = "data") -> Path:
        return self.directory / f"{name}.db"

    def __call__(self, name: str = "data", **options: Any) -> Any:
        """A storage of this kind kept under ``name`` (the same data for the same name,
        for durable kinds)."""
        path = self.path(name)
        storage = self.kind.open(path, **{**self.kind.options, **options})
        self._opened.append(storage)
        self._paths[id(storage)] = path
        return storage

    def reopen(self, storage: Any, **options: Any) -> Any:
        """``storage`` closed and opened again with ``options``; for kinds that keep data
        in memory, ``storage`` itself (closing it would lose the data)."""
        if not self.durable:
            return storage
        storage.close()
        path = self._paths[id(storage)]
        return self(path.stem, **options)

    def uri(self, name: str = "data") -> str:
        """The ``amphora.open`` URI of the storage kept under ``name``."""
        if self.kind.uri is None:
            pytest.skip(f"{self.name} storage: no URI form")
        return self.kind.uri(self.path(name))

    def supports(self, capability: str, storage: Any = None) -> bool:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {CAPABILITIES}")
        attribute = "is_remote" if capability == "remote" else f"supports_{capability}"
        if storage is None:
            storage = self._opened[0] if self._opened else self()
        return bool(getattr(storage, attribute))

    def require(self, capability: str, storage: Any = None) -> None:
        """Skip the test, with a reason, unless storages of this kind have ``capability``
        (one of ``history``, ``undo``, ``pack``, ``remote``)."""
        if not self.supports(capability, storage):
            why = self.kind.notes.get(capability)
            if why is None:
                flag = "is_remote" if capability == "remote" else f"supports_{capability}"
                why = f"{flag} is False"
            pytest.skip(f"{self.name} storage: no {capability} ({why})")

    def close_all(self) -> None:
        for storage in reversed(self._opened):
            try:
                storage.close()
            except Exception:
                pass


def _import_error(kind: StorageKind) -> str | None:
    try:
        importlib.import_module(kind.module)
    except ImportError as exc:
        return f"{kind.name} storage cannot be imported: {exc}"
    return None


@pytest.fixture(params=STORAGE_KINDS, ids=[kind.name for kind in STORAGE_KINDS])
def make_storage(request, tmp_path) -> Any:
    kind: StorageKind = request.param
    problem = _import_error(kind)
    if problem:
        pytest.skip(problem)
    factory = StorageFactory(kind, tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def storage_factory(make_storage) -> Any:
    """The same as ``make_storage``."""
    return make_storage


@pytest.fixture
def storage(make_storage) -> Any:
    return make_storage()


@pytest.fixture
def db(storage) -> amphora.DB:
    database = amphora.DB(storage)
    yield database
    database.close()


@pytest.fixture(scope="session", autouse=True)
def _amphora_servers_lifetime():
    """The storage servers the client kinds started are stopped at the end."""
    yield
    serverprocess.stop_shared_servers()


@pytest.fixture(scope="session", autouse=True)
def _postgres_server_lifetime():
    """The PostgreSQL server, if a test started it, is stopped and deleted at the end."""
    yield
    pgserver.stop()


@pytest.fixture(autouse=True)
def _drop_postgresql_schemas():
    """The schemas a test's PostgreSQL storages used are dropped after it."""
    yield
    server = pgserver.started()
    if server is not None:
        server.drop_schemas()


@pytest.fixture(autouse=True)
def _clean_thread_transaction():
    """No test leaks a half-done transaction of the thread-local manager into the next."""
    yield
    transaction.manager.abort()
