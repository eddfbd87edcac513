"""A private PostgreSQL server for the tests, started from the test session itself.

:func:`server` starts one on first use (``initdb`` into a fresh temporary directory,
``pg_ctl start`` on a free port of 127.0.0.1 and on a unix socket in that directory,
``trust`` authentication, ``fsync`` off) and :func:`stop` stops it and deletes the
directory. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user (created when missing) and the server programs run through ``runuser``.

Each test gets its own *schema* in the one test database (:meth:`PostgresServer.dsn`
with a schema name; :meth:`PostgresServer.drop_schemas` afterwards): creating and dropping
a schema costs milliseconds, a database from a template a tenth of a second.

The binaries are searched in ``PATH`` and then in ``/usr/lib/postgresql/<version>/bin``
(Debian's layout; ``scripts/test`` installs the package when neither has them). When they
cannot be found, :func:`server` raises :class:`PostgresUnavailable`: outside CI the tests
skip with its message, under CI (``CI`` set to a true value) they fail.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "server", "require", "started", "stop",
           "find_bindir", "schema_for", "in_ci", "schema_uri", "claim_schema"]

DATABASE = "amphora_test"
USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server programs on this machine (or the server did not start)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    def version(path: str) -> tuple:
        name = Path(path).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return pwd.getpwnam(name)


def schema_for(key: str) -> str:
    """A schema name for ``key`` (a test's storage path): the same key, the same schema."""
    return "t_" + hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


class PostgresServer:
    """One running PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = _free_port()
        # /tmp: short enough for a unix socket path, and reachable by the postgres user
        self.directory = Path(tempfile.mkdtemp(
            prefix="amphora-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.data = self.directory / "data"
        self.socket_dir = self.directory
        self.log = self.directory / "server.log"
        self._as: list[str] = []
        self._lock = threading.Lock()
        self._schemas: list[str] = []
        if os.geteuid() == 0:
            owner = _ensure_user(USER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", USER, "--"]

    # -- lifecycle ------------------------------------------------------------------
    def _run(self, *args: str) -> None:
        command = [*self._as, str(self.bindir / args[0]), *args[1:]]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=self.directory)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{log}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.socket_dir}", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=300",
            "-c shared_buffers=64MB", "-c max_locks_per_transaction=256"])
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")
        with self.connect("postgres") as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        """Stop the server and delete its directory. If ``pg_ctl stop`` fails, the
        postmaster named in ``postmaster.pid`` is sent SIGQUIT (PostgreSQL's immediate
        shutdown) before the directory goes: never a server left running without it."""
        pid_file = self.data / "postmaster.pid"
        try:
            if pid_file.exists():
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
                except PostgresUnavailable:
                    _quit_postmaster(pid_file)
                    raise
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- use ------------------------------------------------------------------------
    def dsn(self, database: str = DATABASE, tcp: bool = False) -> str:
        """A libpq connection string for ``database`` (over the unix socket unless ``tcp``)."""
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return f"host={host} port={self.port} user={USER} dbname={database}"

    def uri(self, **query: object) -> str:
        """A ``postgresql://`` storage URI of the test database, with ``query`` options."""
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}" + (
            f"?{params}" if params else "")

    def connect(self, database: str = DATABASE):
        import psycopg
        return psycopg.connect(self.dsn(database), autocommit=True)

    def sql(self, schema: str, statement: str, params: object = ()) -> list | None:
        """Run ``statement`` in ``schema`` on a session of its own (as another client of
        the database would); its rows, or None for a statement that returns none."""
        with self.connect() as conn:
            conn.execute(f'SET search_path = "{schema}"')
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else None

    def remember_schema(self, schema: str) -> None:
        """Note that a test uses ``schema`` (dropped by :meth:`drop_schemas`)."""
        with self._lock:
            if schema not in self._schemas:
                self._schemas.append(schema)

    def drop_schemas(self) -> None:
        """Drop the schemas the tests used since the last call."""
        with self._lock:
            schemas, self._schemas = self._schemas, []
        if not schemas:
            return
        import psycopg
        with self.connect() as conn:
            conn.execute("SET lock_timeout = '10s'")
            for schema in schemas:
                try:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                except psycopg.errors.LockNotAvailable:
                    pass  # still used by a storage some test left open: it stays


_server: PostgresServer | None = None
_failure: str | None = None
_start_lock = threading.Lock()


def server() -> PostgresServer:
    """The session's server, started on first use."""
    global _server, _failure
    with _start_lock:
        if _server is not None:
            return _server
        if _failure is not None:
            raise PostgresUnavailable(_failure)
        bindir = find_bindir()
        if bindir is None:
            _failure = ("no PostgreSQL server programs (initdb, pg_ctl) in PATH or "
                        "/usr/lib/postgresql/*/bin; install the postgresql package")
            raise PostgresUnavailable(_failure)
        candidate = PostgresServer(bindir)
        try:
            candidate.start()
        except Exception as exc:
            candidate.stop()
            _failure = f"the test PostgreSQL server did not start: {exc}"
            raise PostgresUnavailable(_failure) from exc
        _server = candidate
        return _server


def require() -> PostgresServer:
    """The session's server for a pytest test: skipped without PostgreSQL programs, except
    under CI, where that fails the test (CI must run every PostgreSQL test)."""
    import pytest
    try:
        return server()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI: {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")


def _quit_postmaster(pid_file: Path) -> None:
    """SIGQUIT to the postmaster whose pid is the first line of ``pid_file``."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError):
        pass  # gone already, or no pid to read


def started() -> PostgresServer | None:
    """The session's server if it was started, else None."""
    return _server


def stop() -> None:
    """Stop the session's server (if started) and delete its directory."""
    global _server
    with _start_lock:
        current, _server = _server, None
    if current is not None:
        current.stop()


def claim_schema(key: str) -> str:
    """For a pytest test: the schema of ``key`` (a test's id, a storage's path) in the
    session's server, one per test and key, dropped after the test."""
    schema = schema_for(key)
    require().remember_schema(schema)
    return schema


def schema_uri(path: str, **query: object) -> str:
    """For a pytest test: the URI of the schema of ``path`` in the session's server (one
    per test and path, dropped after the test), with ``query`` options."""
    return require().uri(schema=claim_schema(str(path)), **query)
