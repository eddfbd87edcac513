"""The recipes: how each part is installed, run, checked and uninstalled.

A :class:`Recipe` is made from a part's effective settings. ``install()`` creates what the
part needs and returns a :class:`Record` of it: ``created`` paths (removed when the part is
uninstalled) and ``data`` paths (kept, removed only by ``amphora deploy destroy PART``).
``program()`` is the process supervisord runs, or None for a part without one (an SQLite
file). ``ready()`` says why the part is not ready yet (None once it is: the server
answers, the app's ``/healthz`` answers); ``setup()`` runs once it is, before the parts
that need it are installed (the local cluster creates its database there).

=========  ==================================================================================
storage    ``sqlite://``: the file's directory; no process. ``postgresql://`` with
           ``local = true``: a cluster in ``var/postgresql`` (``initdb`` as the ``postgres``
           user when run as root), a generated password in ``var/secrets/pg-password`` and a
           libpq password file ``var/secrets/pgpass`` (both mode 0600), the ``postgres``
           server as the process. Otherwise an external server: ready when it answers.
server     a token (``token_file``, generated when missing, mode 0600); ``amphora serve``.
follower   the storage's JSON mirror in follow mode; ``amphora follow``. Uninstalling
           turns the mirror back to one kept by the commits.
kanban     ``amphora kanban serve``.
=========  ==================================================================================
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amphora.deploy.errors import DeployError
from amphora.deploy.schema import Part, absolute, local_host_port
from amphora.deploy.supervisor import Program

__all__ = ["Record", "Recipe", "recipe_for", "POSTGRES_USER", "find_postgres_bindir"]

POSTGRES_USER = "postgres"


@dataclass
class Record:
    """What a part installed: paths removed on uninstall, and data paths kept."""
    created: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, list[str]]:
        return {"created": self.created, "data": self.data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(list(data.get("created", [])), list(data.get("data", [])))


class Recipe:
    """A part's lifecycle; the base is a part with nothing to install and no process."""

    #: whether ready() really looks (a server answers...): then the part is ready as soon
    #: as it says so; otherwise once supervisord counts its process as started
    checks_readiness = False

    def __init__(self, part: Part, directory: Path):
        self.part = part
        self.settings = part.settings
        self.directory = directory

    @property
    def name(self) -> str:
        return self.part.name

    def install(self) -> Record:
        return Record()

    def program(self) -> Program | None:
        return None

    def ready(self) -> str | None:
        return None

    def setup(self) -> None:
        """Once ready (every time `up` starts the part): finish what needs it running."""

    def address(self) -> str:
        return ""

    def uninstall(self, record: Record) -> None:
        for path in map(Path, reversed(record.created)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def destroy(self, record: Record) -> None:
        """Uninstall and delete the part's data too."""
        self.uninstall(record)
        self.uninstall(Record(created=record.data))

    def intact(self, record: Record) -> bool:
        """Whether what the part installed is still there (else it is installed again)."""
        return all(Path(path).exists() for path in record.created)

    def _amphora(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "amphora", *args]


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)


def _run(command: list[str], what: str, cwd: Path) -> None:
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=cwd)
    if done.returncode != 0:
        raise DeployError(f"{what} failed ({done.returncode}): {done.stdout.strip()}")


def _sqlite_file(uri: str) -> Path:
    from amphora.uri import parse_uri
    path = parse_uri(uri)[1]
    return Path(path[1:] if path.startswith("/") else path)


# -- storage ---------------------------------------------------------------------------------

class SQLiteStorage(Recipe):
    def install(self) -> Record:
        file = _sqlite_file(self.settings["uri"])
        file.parent.mkdir(parents=True, exist_ok=True)
        return Record(data=[str(file), f"{file}-wal", f"{file}-shm"])

    def address(self) -> str:
        return str(_sqlite_file(self.settings["uri"]))


class ExternalPostgreSQL(Recipe):
    checks_readiness = True

    def ready(self) -> str | None:
        from amphora.uri import open_storage
        try:
            open_storage(self.settings["uri"]).close()
        except Exception as exc:
            return f"the database does not answer: {exc}"
        return None

    def address(self) -> str:
        host, port = local_host_port(self.settings["uri"])
        return f"{host}:{port}"


def find_postgres_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: PATH, then Debian's
    ``/usr/lib/postgresql/VERSION/bin`` (the newest)."""
    initdb = shutil.which("initdb")
    if initdb is not None and (Path(initdb).resolve().parent / "postgres").exists():
        return Path(initdb).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: [int(x) for x in p.parent.parent.name.split(".")
                                       if x.isdigit()], reverse=True)
    return next((p.parent for p in candidates if (p.parent / "postgres").exists()), None)


class LocalPostgreSQL(Recipe):
    """A PostgreSQL cluster of the deployment's own, under ``var/postgresql``."""
    checks_readiness = True


    @property
    def home(self) -> Path:
        return self.directory / "var" / "postgresql"

    @property
    def password_file(self) -> Path:
        return self.directory / "var" / "secrets" / "pg-password"

    @property
    def passfile(self) -> Path:
        return self.directory / "var" / "secrets" / "pgpass"

    def _user(self) -> str | None:
        """The user the cluster belongs to: ``postgres`` when we are root (PostgreSQL
        refuses to run as root), else ourselves (None)."""
        return POSTGRES_USER if os.geteuid() == 0 else None

    def _bindir(self) -> Path:
        bindir = find_postgres_bindir()
        if bindir is None:
            raise DeployError("[storage] local = true needs the PostgreSQL server programs "
                              "(initdb, postgres) in PATH or /usr/lib/postgresql/*/bin; "
                              "install the postgresql package")
        return bindir

    def _uri_parts(self) -> tuple[str, int, str, str]:
        from urllib.parse import urlsplit
        host, port = local_host_port(self.settings["uri"])
        location = urlsplit(self.settings["uri"].partition("?")[0])
        user = location.username or POSTGRES_USER
        dbname = location.path.strip("/") or user
        return host, port, user, dbname

    def install(self) -> Record:
        bindir = self._bindir()
        host, port, user, _ = self._uri_parts()
        if not self.password_file.exists():
            _private_file(self.password_file, secrets.token_urlsafe(24) + "\n")
        password = self.password_file.read_text().strip()
        _private_file(self.passfile, f"*:{port}:*:{user}:{password}\n")
        data = self.home / "data"
        self.home.mkdir(parents=True, exist_ok=True)
        owner = self._user()
        run_as: list[str] = []
        if owner is not None:
            account = _ensure_user(owner)
            for path in [self.home, *self.home.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid)
            run_as = ["runuser", "-u", owner, "--"]
            check = subprocess.run([*run_as, "test", "-w", str(self.home)])
            if check.returncode != 0:
                raise DeployError(
                    f"the {owner} user cannot reach {self.home}: make the directories above "
                    "it searchable by others (chmod o+x), or deploy in another directory")
        if not (data / "PG_VERSION").exists():
            initial = self.home / "initdb-password"
            _private_file(initial, password + "\n")
            if owner is not None:
                os.chown(initial, account.pw_uid, account.pw_gid)
            try:
                _run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", user,
                      f"--pwfile={initial}", "-A", "scram-sha-256", "-E", "UTF8",
                      "--no-locale"], "initdb", self.home)
            finally:
                initial.unlink(missing_ok=True)
        return Record(data=[str(self.home), str(self.password_file), str(self.passfile)])

    def program(self) -> Program | None:
        host, port, _, _ = self._uri_parts()
        return Program(self.name, [
            str(self._bindir() / "postgres"), "-D", str(self.home / "data"), "-p", str(port),
            "-c", f"listen_addresses={host}", "-c", "unix_socket_directories="],
            self.home, user=self._user(), stopsignal="INT")  # INT: a fast shutdown

    def _connect(self, dbname: str) -> Any:
        import psycopg
        host, port, user, _ = self._uri_parts()
        return psycopg.connect(host=host, port=port, user=user, dbname=dbname,
                               passfile=str(self.passfile), connect_timeout=2,
                               autocommit=True)

    def ready(self) -> str | None:
        try:
            with self._connect("postgres") as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            return f"PostgreSQL does not answer: {exc}"
        return None

    def setup(self) -> None:
        from psycopg import sql
        dbname = self._uri_parts()[3]
        with self._connect("postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def address(self) -> str:
        host, port, _, dbname = self._uri_parts()
        return f"{host}:{port}/{dbname}"


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", name], f"useradd {name}", Path("/"))
        return pwd.getpwnam(name)


# -- server, follower, kanban ---------------------------------------------------------------

class Server(Recipe):
    checks_readiness = True

    def _token_file(self) -> Path:
        return absolute(self.directory, self.settings["token_file"])

    def install(self) -> Record:
        token = self._token_file()
        if not token.exists():
            _private_file(token, secrets.token_urlsafe(32) + "\n")
        for key in ("tls_cert", "tls_key"):
            if self.settings[key] and not absolute(self.directory, self.settings[key]).exists():
                raise DeployError(f"[server] {key}: no such file: {self.settings[key]}")
        return Record(data=[str(token)])

    def program(self) -> Program | None:
        command = self._amphora("serve", self.settings["storage"],
                                "--listen", self.settings["listen"],
                                "--token-file", str(self._token_file()))
        if self.settings["tls_cert"]:
            command += ["--tls-cert", str(absolute(self.directory, self.settings["tls_cert"])),
                        "--tls-key", str(absolute(self.directory, self.settings["tls_key"]))]
        return Program(self.name, command, self.directory)

    def ready(self) -> str | None:
        from amphora.uri import open_storage
        try:
            open_storage(self.settings["uri"], wait_timeout=1).close()
        except Exception as exc:
            return f"the server does not answer: {exc}"
        return None

    def address(self) -> str:
        return self.settings["listen"]


class Follower(Recipe):
    def _mirror(self, mode: str) -> None:
        from amphora.uri import open_storage
        storage = open_storage(self.settings["storage"])
        try:
            if not getattr(storage, "supports_mirror", False):
                raise DeployError(f"[follower] {self.settings['storage']}: this storage "
                                  "cannot keep a JSON mirror")
            if storage.mirror_mode() != mode:
                storage.create_mirror(None, mode)
        finally:
            storage.close()

    def install(self) -> Record:
        if self.settings["enabled"]:
            self._mirror("follow")
        return Record()

    def uninstall(self, record: Record) -> None:
        if not self.settings["enabled"]:
            return
        try:
            self._mirror("sync")
        except Exception as exc:  # the storage is gone too: nothing follows it anyway
            print(f"amphora deploy: follower: the mirror stays in follow mode ({exc})",
                  file=sys.stderr)

    def program(self) -> Program | None:
        if not self.settings["enabled"]:
            return None
        return Program(self.name, self._amphora(
            "follow", self.settings["storage"], "--interval", str(self.settings["interval"])),
            self.directory)

    def address(self) -> str:
        return "follows " + self.settings["storage"].partition("?")[0]


class Kanban(Recipe):
    checks_readiness = True

    def program(self) -> Program | None:
        command = self._amphora("kanban", "serve", self.settings["storage"],
                                "--listen", self.settings["listen"],
                                "--admin-email", self.settings["admin_email"])
        if not self.settings["mirror"]:
            command.append("--no-mirror")
        return Program(self.name, command, self.directory)

    def ready(self) -> str | None:
        url = f"{self.settings['url']}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return None
                return f"{url} answers {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            return f"{url} does not answer: {exc}"

    def address(self) -> str:
        return self.settings["url"]


def recipe_for(part: Part, directory: Path) -> Recipe:
    """The recipe of ``part``."""
    if part.name == "storage":
        if part.settings["uri"].startswith("sqlite:"):
            return SQLiteStorage(part, directory)
        if part.settings["local"]:
            return LocalPostgreSQL(part, directory)
        return ExternalPostgreSQL(part, directory)
    kinds: dict[str, type[Recipe]] = {"server": Server, "follower": Follower,
                                      "kanban": Kanban}
    return kinds[part.name](part, directory)
