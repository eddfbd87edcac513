"""Storage URIs.

==========================================  ==============================================
``memory://``                               a history-preserving storage in memory
``sqlite:///relative/path.db``              an SQLite file (path relative to the working
                                            directory: three slashes, then the path)
``sqlite:////absolute/path.db``             an SQLite file by absolute path (four slashes)
``postgresql://user@host:port/dbname``      a PostgreSQL database (also ``postgres://``;
                                            a password as ``user:password@``; a unix
                                            socket directory as ``?host=/run/postgresql``)
``demo://?base=URI&changes=URI``           writes go to ``changes`` (default
                                            ``memory://``) over ``base``, which is opened
                                            read-only (see :mod:`amphora.storage.demo`)
``before://?storage=URI&at=MOMENT``         ``storage`` as it was at MOMENT (an ISO-8601
                                            time or a ``0x`` tid), read-only; ``before=``
                                            excludes a commit made exactly then
``amphora://host:port/name?token_file=F``    a storage served by ``amphora serve`` (the
                                            name only when the server serves one per name;
                                            ``amphoras://`` for TLS, ``&ca_file=`` to trust
                                            a private authority)
==========================================  ==============================================

A URI inside another goes in as it is when it has at most one option of its own; write
``&`` inside it as ``%26`` (and ``+`` as ``%2B``) otherwise.

Options go in the query string or as keyword arguments, e.g.
``sqlite:///app.db?keep_history=false&synchronous=full``. A query-string value becomes
the type its option is declared with: a boolean is written ``true``/``false`` (or
``1``/``0``, ``yes``/``no``, ``on``/``off``), a number as digits; every other value stays the
string written (``password=007`` is ``"007"``). The database's own options
(``cache_size``, ``cache_size_bytes``, ``pool_size``, ``record_cache_bytes``) are taken
too, by :func:`amphora.open`. An unknown scheme or option, or a value of the wrong type,
is an :class:`~amphora.errors.InvalidURIError` that names it.
"""
from __future__ import annotations

import inspect
import re
import urllib.parse
from typing import Any, Callable

from amphora.errors import InvalidURIError

__all__ = ["open_storage", "open_storage_for_db", "parse_uri"]

DB_OPTIONS = ("cache_size", "cache_size_bytes", "pool_size", "record_cache_bytes")


def _memory(path: str, **options: Any):
    from amphora.storage.memory import MemoryStorage
    if path not in ("", "/"):
        options.setdefault("name", path.strip("/"))
    return MemoryStorage, options


def _sqlite(path: str, **options: Any):
    from amphora.storage.sqlite import SQLiteStorage
    if not path or path == "/":
        raise InvalidURIError("an sqlite URI needs a file path: sqlite:///path/to/file.db")
    return SQLiteStorage, dict(options, path=path[1:] if path.startswith("/") else path)


#: libpq connection parameters a postgresql:// URI may give in its query string
PG_CONNECTION_PARAMETERS = ("host", "hostaddr", "port", "user", "password", "dbname",
                            "sslmode", "sslrootcert", "sslcert", "sslkey", "passfile",
                            "application_name", "target_session_attrs")


def _postgresql(path: str, **options: Any):
    """``user[:password]@host[:port]/dbname`` and libpq parameters -> a connection string."""
    from amphora.storage.postgresql import PostgreSQLStorage, require_psycopg
    make_conninfo = require_psycopg().conninfo.make_conninfo
    location, _, dbname = path.partition("/")
    userinfo, _, hostport = location.rpartition("@")
    user, _, password = userinfo.partition(":")
    if hostport.startswith("["):  # [IPv6]:port
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    if port and not port.isdigit():
        raise InvalidURIError(f"a postgresql URI's port must be a number, not {port!r}")
    params = {"host": host, "port": port, "user": user, "password": password,
              "dbname": dbname.strip("/")}
    for key in PG_CONNECTION_PARAMETERS:
        if key in options:
            params[key] = str(options.pop(key))
    try:
        dsn = make_conninfo(**{key: value for key, value in params.items() if value})
    except Exception as exc:
        raise InvalidURIError(f"bad postgresql URI: {exc}") from exc
    return PostgreSQLStorage, dict(options, dsn=dsn)


def _demo(path: str, **options: Any):
    """``demo://?base=URI&changes=URI``: layers over a base that is never written."""
    if path not in ("", "/"):
        raise InvalidURIError("a demo URI names its storages in the query string: "
                              "demo://?base=sqlite:///prod.db&changes=memory://")
    return open_demo, options


def open_demo(base: str = "memory://", changes: str = "memory://", read_only: bool = False,
              name: str | None = None) -> Any:
    """The DemoStorage of a ``demo://?base=URI&changes=URI`` URI: ``base`` opened
    read-only, ``changes`` for writing (both memory by default)."""
    from amphora.storage.demo import DemoStorage
    base_storage = open_storage(base, read_only=True)
    try:
        changes_storage = open_storage(changes, read_only=read_only)
    except BaseException:
        base_storage.close()
        raise
    return DemoStorage(base_storage, changes_storage, name=name, read_only=read_only)


def _before(path: str, **options: Any):
    """``before://?storage=URI&at=MOMENT`` (or ``before=MOMENT``): a point in time."""
    if path not in ("", "/"):
        raise InvalidURIError("a before URI names its storage in the query string: "
                              "before://?storage=sqlite:///prod.db&at=2026-11-01T12:00")
    return open_before, options


def open_before(storage: str, before: Any = None, at: Any = None, read_only: bool = True,
                name: str | None = None) -> Any:
    """The BeforeStorage of a ``before://?storage=URI&at=MOMENT`` URI (or ``before=``)."""
    from amphora.storage.before import BeforeStorage, moment_tid
    if before is None and at is None:
        raise InvalidURIError("a before:// URI names its moment: at=MOMENT (or before=MOMENT), "
                              "an ISO-8601 time or a 0x tid")
    for option, moment in (("at", at), ("before", before)):
        if moment is not None:
            try:
                moment_tid(moment)
            except (ValueError, TypeError) as exc:
                hint = (" (a '+' in a URI's query string reads as a space: write it %2B)"
                        if isinstance(moment, str) and " " in moment else "")
                raise InvalidURIError(f"{option}={moment!r}: {exc}{hint}") from None
    opened = open_storage(storage, read_only=True)
    try:
        return BeforeStorage(opened, before=before, at=at, name=name)
    except BaseException:
        opened.close()
        raise


def _amphora(path: str, **options: Any):
    """``amphora://host:port[/name]``: a storage served by ``amphora serve``."""
    from amphora.storage.client import ClientStorage
    location, _, name = path.partition("/")
    host, _, port = location.rpartition(":")
    if host.startswith("[") and host.endswith("]"):  # [IPv6]:port
        host = host[1:-1]
    if not host or not port.isdigit():
        raise InvalidURIError("an amphora URI names the server: amphora://host:port[/name]")
    return ClientStorage, dict(options, host=host, port=int(port), storage=name.strip("/"))


def _amphoras(path: str, **options: Any):
    """``amphoras://host:port[/name]``: the same over TLS."""
    klass, options = _amphora(path, **options)
    return klass, dict(options, tls=True)


SCHEMES: dict[str, Callable[..., tuple[type, dict]]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "postgres": _postgresql,
    "demo": _demo,
    "before": _before,
    "amphora": _amphora,
    "amphoras": _amphoras,
}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_TYPE_NAMES = re.compile(r"\b(bool|int|float|str)\b")


def _declared(parameter: inspect.Parameter | None) -> set[str]:
    """The plain types (bool, int, float, str) a parameter is declared to take."""
    if parameter is None:
        return set()
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__",
                                                                       str(annotation))
        return set(_TYPE_NAMES.findall(text))
    default = parameter.default
    return {type(default).__name__} if isinstance(default, (bool, int, float, str)) else set()


def _coerce(name: str, value: str, parameter: inspect.Parameter | None) -> Any:
    """A query-string ``value`` as the type option ``name`` is declared with: a bool or a
    number when that is all it takes, else the string as written (a password "007" stays
    "007")."""
    declared = _declared(parameter)
    if "str" in declared or not declared & {"bool", "int", "float"}:
        return value
    if "bool" in declared:
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise InvalidURIError(f"{name} must be true or false, not {value!r}")
    try:
        return int(value)
    except ValueError:
        if "float" in declared:
            try:
                return float(value)
            except ValueError:
                pass
    kind = "a number" if "float" in declared else "a whole number"
    raise InvalidURIError(f"{name} must be {kind}, not {value!r}")


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """``(scheme, path, options)`` of a storage URI; the options' values as written (each is
    converted when the storage it goes to says what type it takes)."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidURIError(
            f"{uri!r} is not a storage URI; expected e.g. 'sqlite:///app.db' or 'memory://'")
    scheme, rest = uri.split("://", 1)
    path, _, query = rest.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return scheme.lower(), urllib.parse.unquote(path), options


def open_storage(uri: str, read_only: bool = False, **options: Any):
    """The storage a URI names (see the module docstring for the forms). A database
    option the storage takes as well (``record_cache_bytes`` of an ``amphora://``
    client: the size of its record cache) goes to the storage."""
    storage, db_options = _open(uri, read_only, options, for_db=False)
    if db_options:
        storage.close()
        raise InvalidURIError(
            f"{', '.join(sorted(db_options))}: an option of the database, not of the storage; "
            "amphora.open(uri) takes it")
    return storage


def open_storage_for_db(uri: str, read_only: bool = False, **options: Any
                        ) -> tuple[Any, dict[str, Any]]:
    """The storage a URI names, and the database options (``cache_size``...) its query
    string gave, converted, for :func:`amphora.open`."""
    return _open(uri, read_only, options, for_db=True)


def _open(uri: str, read_only: bool, options: dict[str, Any], for_db: bool
          ) -> tuple[Any, dict[str, Any]]:
    from amphora.db import DB
    scheme, path, query = parse_uri(uri)
    factory = SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise InvalidURIError(f"unknown storage scheme {scheme!r} in {uri!r}; known: {known}")
    db_parameters = inspect.signature(DB).parameters
    db_options = {key: _coerce(key, query.pop(key), db_parameters[key])
                  for key in DB_OPTIONS if key in query}
    from_query = set(query) - set(options)
    merged = {**query, **options}
    if "read_only" in from_query:
        merged["read_only"] = _boolean(merged["read_only"])
    if not isinstance(merged.get("read_only", False), bool):
        raise InvalidURIError(
            f"read_only must be true or false, not {merged['read_only']!r}")
    if read_only or merged.get("read_only"):
        merged["read_only"] = True
    klass, kwargs = factory(path, **merged)
    accepted = inspect.signature(klass).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        storage_options = [p for p in accepted if p not in ("path", "name", "dsn")]
        raise InvalidURIError(
            f"unknown option(s) {', '.join(unknown)} for {scheme}:// storages; "
            f"accepted: {', '.join(storage_options)}; "
            f"and for the database (amphora.open): {', '.join(DB_OPTIONS)}")
    for key in from_query & set(kwargs):
        if isinstance(kwargs[key], str):
            kwargs[key] = _coerce(key, kwargs[key], accepted[key])
    if not for_db:
        for key in [key for key in db_options if key in accepted]:
            kwargs[key] = db_options.pop(key)
    return klass(**kwargs), db_options


def _boolean(value: Any) -> Any:
    """A query string's boolean ``value`` (other values are left for the caller to refuse)."""
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return value
