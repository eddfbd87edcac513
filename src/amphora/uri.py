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
``sqlite:///app.db?keep_history=false&synchronous=full``. Booleans are written
``true``/``false`` (or ``1``/``0``, ``yes``/``no``). An unknown scheme or option is an
:class:`~amphora.errors.InvalidURIError` that names it.
"""
from __future__ import annotations

import inspect
import urllib.parse
from typing import Any, Callable

from amphora.errors import InvalidURIError

__all__ = ["open_storage", "parse_uri"]

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
    from amphora.storage.demo import open_demo
    if path not in ("", "/"):
        raise InvalidURIError("a demo URI names its storages in the query string: "
                              "demo://?base=sqlite:///prod.db&changes=memory://")
    return open_demo, options


def _before(path: str, **options: Any):
    """``before://?storage=URI&at=MOMENT`` (or ``before=MOMENT``): a point in time."""
    from amphora.storage.before import open_before
    if path not in ("", "/"):
        raise InvalidURIError("a before URI names its storage in the query string: "
                              "before://?storage=sqlite:///prod.db&at=2026-11-01T12:00")
    return open_before, options


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


def _convert(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def parse_uri(uri: str) -> tuple[str, str, dict[str, Any]]:
    """``(scheme, path, options)`` of a storage URI."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidURIError(
            f"{uri!r} is not a storage URI; expected e.g. 'sqlite:///app.db' or 'memory://'")
    scheme, rest = uri.split("://", 1)
    path, _, query = rest.partition("?")
    options = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        options[key] = _convert(value)
    return scheme.lower(), urllib.parse.unquote(path), options


def open_storage(uri: str, read_only: bool = False, **options: Any):
    """The storage a URI names (see the module docstring for the forms)."""
    scheme, path, query = parse_uri(uri)
    factory = SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise InvalidURIError(f"unknown storage scheme {scheme!r} in {uri!r}; known: {known}")
    merged = {**query, **options}
    if not isinstance(merged.get("read_only", False), bool):
        raise InvalidURIError(
            f"read_only must be true or false, not {merged['read_only']!r}")
    if read_only or merged.get("read_only"):
        merged["read_only"] = True
    klass, kwargs = factory(path, **merged)
    accepted = inspect.signature(klass).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InvalidURIError(
            f"unknown option(s) {', '.join(unknown)} for {scheme}:// storages; "
            f"accepted: {', '.join(p for p in accepted if p not in ('path', 'name', 'dsn'))}")
    return klass(**kwargs)
