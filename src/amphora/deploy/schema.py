"""The deployment file (``amphora.toml``): its schema, its defaults and its references.

The file is TOML with one table per *part*: ``[storage]``, ``[server]``, ``[follower]``
and ``[kanban]``. Each part takes the settings of :data:`SCHEMA`, each of one type; a
setting left out takes its default, so that ``[kanban]`` alone is a working deployment
(the app on an SQLite file, ``var/app.db``). The ``storage`` part is always there: when
the file has no ``[storage]`` table it takes its defaults.

A string setting may refer to another part's setting as ``${part:key}`` (``${:key}``: the
same part). A value that is one reference and nothing else keeps the referenced value's
type. Besides its settings, a part offers values computed from them (:data:`COMPUTED`):
``${storage:uri}`` is the storage's effective URI (an SQLite path made absolute, a local
PostgreSQL cluster's password file added), ``${server:uri}`` the ``amphora://`` URI of the
server, ``${kanban:url}`` the app's address. A part that refers to another depends on it:
it is installed and started after it, and reinstalled when it changes.

:func:`load` checks the whole file before anything is done with it: an unknown part or
setting, a value of the wrong type, a reference to a missing part or setting, a cycle of
references or a bad URI is a :class:`~amphora.deploy.errors.ConfigError` whose message
starts with ``FILE:LINE:``.
"""
from __future__ import annotations

import ipaddress
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from amphora.deploy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SCHEMA", "COMPUTED", "PART_NAMES", "Setting", "Part", "Deployment", "load",
           "loads"]

PART_NAMES = ("storage", "server", "follower", "kanban")
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_-]*):([A-Za-z0-9_-]+)\}")
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres")
CLIENT_SCHEMES = (*STORAGE_SCHEMES, "amphora", "amphoras")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


# -- value types ----------------------------------------------------------------------------

def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, not {value!r}")
    return float(value)


def _address(value: Any) -> str:
    text = _string(value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT with a port from 1 to 65535, not {text!r}")
    return text


def _path(value: Any) -> str:
    text = _string(value)
    if "\x00" in text:
        raise ValueError("must be a file path")
    return text


def _email(value: Any) -> str:
    text = _string(value)
    if "@" not in text or text.strip() != text:
        raise ValueError(f"must be an email address, not {text!r}")
    return text


def _uri(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        from amphora.errors import InvalidURIError
        from amphora.uri import parse_uri
        text = _string(value)
        try:
            scheme, path, _ = parse_uri(text)
        except InvalidURIError as exc:
            raise ValueError(str(exc)) from None
        if scheme not in schemes:
            raise ValueError(f"{text!r} is not a URI of {', '.join(s + '://' for s in schemes)}")
        if scheme == "sqlite" and path.strip("/") == "":
            raise ValueError(f"{text!r} names no file: sqlite:///path/to/file.db")
        try:
            split = urllib.parse.urlsplit(text.partition("?")[0])
            split.port  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        if scheme in ("amphora", "amphoras") and not split.hostname:
            raise ValueError(f"{text!r} names no server: {scheme}://HOST:PORT")
        return text
    return check


class _Refused(ValueError):
    """A computed value refused: ``key`` names the setting at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Setting:
    """One setting of a part: its type (a function that checks a value and returns it, or
    raises ValueError), its default (a value, or a function of the set of parts in the
    file) and what it means."""
    name: str
    check: Callable[[Any], Any]
    default: Any
    help: str

    def default_for(self, present: frozenset[str]) -> Any:
        return self.default(present) if callable(self.default) else self.default


def _client_storage(present: frozenset[str]) -> str:
    """A client part's storage: through the server when there is one."""
    return "${server:uri}" if "server" in present else "${storage:uri}"


_READY = Setting("ready_timeout", _seconds, 60.0,
                 "seconds `up` waits for the part to be ready before it fails")

SCHEMA: dict[str, tuple[Setting, ...]] = {
    "storage": (
        Setting("uri", _uri(STORAGE_SCHEMES), "sqlite:///var/app.db",
                "the database: sqlite:///path or postgresql://user@host:port/dbname"),
        Setting("local", _boolean, False,
                "run a PostgreSQL cluster for the postgresql:// URI under var/postgresql, "
                "with a generated password"),
        _READY,
    ),
    "server": (
        Setting("listen", _address, "127.0.0.1:8100", "the server's HOST:PORT"),
        Setting("storage", _uri(STORAGE_SCHEMES), "${storage:uri}", "the storage it serves"),
        Setting("token_file", _path, "var/secrets/token",
                "the clients' token (generated when missing)"),
        Setting("tls_cert", _path, "", "TLS: the certificate (PEM; with tls_key)"),
        Setting("tls_key", _path, "", "TLS: its private key (PEM)"),
        _READY,
    ),
    "follower": (
        Setting("enabled", _boolean, True, "keep the JSON mirror current in follow mode"),
        Setting("storage", _uri(CLIENT_SCHEMES), _client_storage, "the database it follows"),
        Setting("interval", _seconds, 0.5, "seconds between looks for new commits"),
        _READY,
    ),
    "kanban": (
        Setting("listen", _address, "127.0.0.1:8000", "the web app's HOST:PORT"),
        Setting("storage", _uri(CLIENT_SCHEMES), _client_storage, "the app's database"),
        Setting("admin_email", _email, "admin@localhost",
                "the first administrator (invited at the first start)"),
        Setting("mirror", _boolean, True,
                "give the database a JSON mirror and a text index for search"),
        _READY,
    ),
}

#: The values each part computes from its settings (functions of the deployment's
#: directory and the part's checked settings).
COMPUTED: dict[str, dict[str, Callable[[Path, dict[str, Any]], Any]]] = {}


def _computes(part: str, key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        COMPUTED.setdefault(part, {})[key] = function
        return function
    return register


def absolute(directory: Path, path: str) -> Path:
    """``path`` of a setting, relative to the deployment's directory."""
    return directory / path if not Path(path).is_absolute() else Path(path)


@_computes("storage", "uri")
def _storage_uri(directory: Path, settings: dict[str, Any]) -> str:
    from amphora.uri import parse_uri
    scheme, path, options = parse_uri(settings["uri"])
    if scheme == "sqlite":
        if settings["local"]:
            raise _Refused("local", "local = true runs a PostgreSQL cluster: it needs a "
                           "postgresql:// URI")
        query = settings["uri"].partition("?")[2]
        file = absolute(directory, path[1:] if path.startswith("/") else path)
        return f"sqlite:///{file}" + (f"?{query}" if query else "")
    if not settings["local"]:
        return settings["uri"]
    host = local_host_port(settings["uri"])[0]
    if host not in LOCAL_HOSTS:
        raise _Refused("uri", f"a local cluster listens on this machine: the URI's host must be "
                         f"one of {', '.join(LOCAL_HOSTS)}, not {host!r}")
    if "password" in options or "passfile" in options or ":" in path.partition("@")[0]:
        raise _Refused("uri", "a local cluster's password is generated: the URI must not "
                       "give one")
    separator = "&" if "?" in settings["uri"] else "?"
    return f"{settings['uri']}{separator}passfile={directory / 'var' / 'secrets' / 'pgpass'}"


def local_host_port(uri: str) -> tuple[str, int]:
    """The host and port of a postgresql:// URI (port 5432 when it gives none)."""
    location = urllib.parse.urlsplit(uri.partition("?")[0])
    return location.hostname or "localhost", location.port or 5432


@_computes("server", "uri")
def _server_uri(directory: Path, settings: dict[str, Any]) -> str:
    if bool(settings["tls_cert"]) != bool(settings["tls_key"]):
        raise _Refused("tls_key" if settings["tls_cert"] else "tls_cert",
                       "TLS needs both tls_cert and tls_key")
    host, _, port = settings["listen"].rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    host = f"[{host.strip('[]')}]" if _is_ipv6(host.strip("[]")) else host
    query = f"token_file={absolute(directory, settings['token_file'])}"
    if settings["tls_cert"]:
        cert = absolute(directory, settings["tls_cert"])
        return f"amphoras://{host}:{port}?{query}&ca_file={cert}"
    return f"amphora://{host}:{port}?{query}"


@_computes("kanban", "url")
def _kanban_url(directory: Path, settings: dict[str, Any]) -> str:
    host, _, port = settings["listen"].rpartition(":")
    host = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://[{host.strip('[]')}]:{port}" if _is_ipv6(host.strip("[]")) \
        else f"http://{host}:{port}"


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


# -- the loaded deployment ------------------------------------------------------------------

@dataclass
class Part:
    """One part as the deployment will run it: its effective settings (checked, references
    resolved, computed values included), where each came from, and the parts it needs."""
    name: str
    settings: dict[str, Any]
    sources: dict[str, str]
    needs: tuple[str, ...]

    def effective(self) -> dict[str, Any]:
        """What decides whether the part must be reinstalled: every setting but the
        readiness timeout (which changes how long `up` waits, not what runs)."""
        return {key: value for key, value in self.settings.items() if key != "ready_timeout"}


@dataclass
class Deployment:
    """A checked deployment file: its parts in dependency order."""
    file: Path
    directory: Path
    parts: dict[str, Part] = field(default_factory=dict)


def load(file: str | Path) -> Deployment:
    """Read and check the deployment file ``file`` (ConfigError naming FILE:LINE)."""
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; write one with a [kanban] part at least "
                          "(see docs/deploy.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return loads(text, path.resolve())


def loads(text: str, file: Path) -> Deployment:
    """Check the deployment file's ``text`` (read from ``file``, which names it in errors
    and whose directory is the deployment's)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file.name}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
    def where(part: str, key: str | None = None) -> str:
        """FILE:LINE of a setting (of the part's table when the key is not written)."""
        return f"{file.name}:{lines.get((part, key), lines.get((part, None), 1))}"

    for part, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where(part, part)}: {part!r} is outside any part; settings "
                              f"go in a part ([{'], ['.join(PART_NAMES)}])")
        if part not in SCHEMA:
            raise ConfigError(f"{where(part)}: unknown part [{part}]; the parts are "
                              f"{', '.join(f'[{name}]' for name in PART_NAMES)}")
        known = [setting.name for setting in SCHEMA[part]]
        for key in table:
            if key not in known:
                raise ConfigError(f"{where(part, key)}: [{part}] has no setting {key!r}; "
                                  f"its settings are {', '.join(known)}")
    if not data:
        raise ConfigError(f"{file.name}: no parts; the shortest deployment is one line, "
                          "[kanban]")
    present = frozenset(data) | {"storage"}
    resolver = _Resolver(file.parent, data, present, where)
    parts = {name: resolver.part(name) for name in PART_NAMES if name in present}
    return Deployment(file, file.parent, {name: parts[name] for name in
                                          _ordered(parts, where)})


def _key_lines(text: str) -> dict[tuple[str, str | None], int]:
    """``(part, key) -> line`` and ``(part, None) -> line of its table``, by scanning the
    text: a table header is ``[name]`` alone on its line, a setting ``key = ...`` at the
    start of one (top-level keys are recorded as ``(key, key)``)."""
    lines: dict[tuple[str, str | None], int] = {}
    table: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"\[\s*([A-Za-z0-9_.\"'-]+)\s*\]\s*(#.*)?$", stripped)
        if header:
            table = header.group(1).strip("\"'")
            lines.setdefault((table, None), number)
            continue
        key = re.match(r"""([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*[.=]""", stripped)
        if key:
            name = key.group(1).strip("\"'")
            lines.setdefault((table, name) if table else (name, name), number)
    return lines


class _Resolver:
    """Resolves settings and references, one ``(part, key)`` at a time, with the chain of
    references under way (a key met again on it is a cycle)."""

    def __init__(self, directory: Path, data: dict[str, Any], present: frozenset[str],
                 where: Callable[..., str]):
        self.directory = directory
        self.data = data
        self.present = present
        self.where = where
        self.values: dict[tuple[str, str], Any] = {}
        self.sources: dict[tuple[str, str], str] = {}
        self.needs: dict[str, set[str]] = {name: set() for name in present}
        self.computed: dict[str, dict[str, Any]] = {}
        # the references under way: (part, key) for a setting, (part, "") for the values
        # a part computes from all its settings
        self.chain: list[tuple[str, str]] = []

    def part(self, name: str) -> Part:
        settings = {s.name: self.value(name, s.name) for s in SCHEMA[name]}
        sources = {s.name: self.sources[(name, s.name)] for s in SCHEMA[name]}
        computed = self._computed(name)
        for key, value in computed.items():
            if settings.get(key, value) != value:
                sources[key] += f", effective value computed from {settings[key]!r}"
            elif key not in settings:
                sources[key] = "computed"
        settings.update(computed)
        return Part(name, settings, sources, tuple(n for n in PART_NAMES
                                                   if n in self.needs[name]))

    def _computed(self, name: str) -> dict[str, Any]:
        if name in self.computed:
            return self.computed[name]
        if (name, "") in self.chain:
            self._cycle((name, ""))
        self.chain.append((name, ""))
        try:
            settings = {s.name: self.value(name, s.name) for s in SCHEMA[name]}
        finally:
            self.chain.pop()
        result = {}
        for key, compute in COMPUTED.get(name, {}).items():
            try:
                result[key] = compute(self.directory, settings)
            except ValueError as exc:
                at_fault = getattr(exc, "key", key)
                line = self.where(name, at_fault if at_fault in self.data.get(name, {})
                                  else None)
                raise ConfigError(f"{line}: [{name}] {exc}") from None
        self.computed[name] = result
        return result

    def _cycle(self, node: tuple[str, str]) -> None:
        cycle = [(p, k) for p, k in self.chain[self.chain.index(node):] + [node] if k]
        raise ConfigError(f"{self.where(*cycle[0])}: references go round in a cycle: "
                          f"{' -> '.join(f'${{{p}:{k}}}' for p, k in cycle)}")

    def value(self, part: str, key: str) -> Any:
        if (part, key) in self.values:
            return self.values[(part, key)]
        if (part, key) in self.chain:
            self._cycle((part, key))
        self.chain.append((part, key))
        try:
            setting = next(s for s in SCHEMA[part] if s.name == key)
            written = key in self.data.get(part, {})
            raw = self.data[part][key] if written else setting.default_for(self.present)
            source = f"{self.where(part, key)}" if written else "default"
            if isinstance(raw, str) and REFERENCE.search(raw):
                raw = self._substitute(part, key, raw)
                source += f" ({self.data[part][key] if written else setting.default_for(self.present)})"
            try:
                checked = setting.check(raw)
            except ValueError as exc:
                raise ConfigError(f"{self.where(part, key)}: [{part}] {key} {exc}") from None
            self.values[(part, key)] = checked
            self.sources[(part, key)] = source
            return checked
        finally:
            self.chain.pop()

    def _substitute(self, part: str, key: str, raw: str) -> Any:
        def resolve(match: re.Match[str]) -> Any:
            other, other_key = match.group(1) or part, match.group(2)
            if other not in self.present:
                raise ConfigError(
                    f"{self.where(part, key)}: [{part}] {key} refers to {match.group(0)}, "
                    f"but the file has no [{other}] part")
            keys = [s.name for s in SCHEMA[other]] + list(COMPUTED.get(other, {}))
            if other_key not in keys:
                raise ConfigError(
                    f"{self.where(part, key)}: [{part}] {key} refers to {match.group(0)}, "
                    f"but [{other}] has no {other_key!r} (it has {', '.join(keys)})")
            if other != part:
                self.needs[part].add(other)
            if other_key in COMPUTED.get(other, {}):
                return self._computed(other)[other_key]
            return self.value(other, other_key)
        whole = REFERENCE.fullmatch(raw)
        if whole:
            return resolve(whole)
        return REFERENCE.sub(lambda match: str(resolve(match)), raw)


def _ordered(parts: dict[str, Part], where: Callable[..., str]) -> list[str]:
    """The parts' names, each after the parts it needs (PART_NAMES' order otherwise)."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise ConfigError(f"{where(cycle[0])}: parts need each other in a cycle: "
                              f"{' -> '.join(cycle)}")
        visiting.append(name)
        for need in parts[name].needs:
            visit(need)
        visiting.pop()
        order.append(name)

    for name in parts:
        visit(name)
    return order
