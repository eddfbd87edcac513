"""The ``amphora kanban`` command (also ``python -m amphora_kanban``).

``serve URI [--listen HOST:PORT] [--admin-email EMAIL] [--no-mirror]`` runs the web app
under uvicorn on ``amphora.open(URI)``. Once it listens it prints one line,
``kanban: listening on http://HOST:PORT`` (the real port when PORT is 0); before it, on
a site where no administrator can sign in, ``kanban: first administrator: EMAIL, sign in
once at http://HOST:PORT/invite/TOKEN``. It gives a storage that can keep a JSON mirror
and has none a mirror and the cards' text index (for searching the bag), unless
``--no-mirror``. SIGTERM or Ctrl-C stop it cleanly.

``adduser URI EMAIL [--admin] [--name NAME] --password-file FILE`` adds an account with
the password in FILE (``-``: standard input; one final newline is not part of it).

Errors a user can cause (a bad URI or address, an unreadable file, a refused value)
print one line, ``kanban: error: ...``, on stderr and exit with status 2.

The environment variable ``AMPHORA_KANBAN_ARGON2_FAST=1`` makes password hashing cheap:
for tests only, never in production.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from typing import Any, Sequence

__all__ = ["main", "build_parser", "listening_socket"]

EXIT_ERROR = 2
FAST_HASHING = "AMPHORA_KANBAN_ARGON2_FAST"
WEB_DEPENDENCIES = ("starlette", "uvicorn", "argon2", "itsdangerous")


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def _web() -> Any:
    """The web package, or CommandError naming what to install."""
    missing = []
    for name in WEB_DEPENDENCIES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise CommandError(f"the web app needs {', '.join(missing)}: "
                           "pip install amphora[kanban]")
    import amphora_kanban.web
    return amphora_kanban.web


def _open(uri: str) -> Any:
    import amphora
    try:
        return amphora.open(uri)
    except (ValueError, TypeError) as exc:  # some URI mistakes are plain ValueErrors
        raise CommandError(f"{uri}: {exc}") from exc


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise CommandError(f"--listen takes HOST:PORT (port 0 to 65535), not {text!r}")
    return host.strip("[]"), int(port)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: a free port)."""
    # Made with IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on such
    # sockets, and with it on, each response on a kept-alive connection waits for the
    # client's delayed ACK (40 ms on Linux).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    host, port = _listen(args.listen)
    web = _web()
    import uvicorn

    from amphora_kanban.web.accounts import first_admin
    from amphora_kanban.web.archive import setup_search

    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        raise CommandError(f"--listen {args.listen}: {exc.strerror or exc}") from exc
    db = _open(args.uri)
    try:
        app = web.create_app(db, fast_hashing=os.environ.get(FAST_HASHING) == "1")
        if not args.no_mirror:
            try:
                setup_search(db)
            except Exception as exc:  # search falls back to scanning: not fatal
                logging.getLogger(__name__).warning("no JSON mirror for search: %s", exc)
        url = _url(host, sock.getsockname()[1])
        store = app.state.kanban.store
        token = store.write_now(lambda conn: first_admin(conn, args.admin_email, time.time()))
        if token is not None:
            print(f"kanban: first administrator: {args.admin_email.lower()}, sign in once "
                  f"at {url}/invite/{token}", flush=True)
        hub = app.state.live

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if not self.should_exit:
                    print(f"kanban: listening on {url}", flush=True)

            def handle_exit(self, sig: int, frame: Any) -> None:
                # Streams of live updates would keep the graceful shutdown waiting.
                hub.close_soon()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5, lifespan="on")
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
        db.close()
    return 0


def _password(path: str) -> str:
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    return text[:-1] if text.endswith("\n") else text


def cmd_adduser(args: argparse.Namespace) -> int:
    _web()
    from amphora_kanban.web.accounts import add_account
    from amphora_kanban.web.auth import Passwords, setup_auth
    from amphora_kanban.web.store import Store

    password = _password(args.password_file).rstrip("\r")
    passwords = Passwords(os.environ.get(FAST_HASHING) == "1")
    passwords.check(password)
    db = _open(args.uri)
    try:
        store = Store(db)
        store.setup()

        def add(conn: Any) -> str:
            setup_auth(conn)
            user = add_account(conn, passwords, args.email, password, args.name, args.admin)
            return f"kanban: added {user.email} ({user.role})"
        print(store.write_now(add), flush=True)
    finally:
        db.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amphora kanban",
                                     description="The Kanban web app on an amphora database.")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser("serve", help="run the web app",
                                description="Run the web app on the database URI.")
    serve.add_argument("uri", metavar="URI", help="the database (sqlite:///kanban.db ...)")
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8000",
                       help="the address (default 127.0.0.1:8000; port 0: a free one)")
    serve.add_argument("--admin-email", metavar="EMAIL", default="admin@localhost",
                       help="the first administrator's email, on a site without one "
                            "(default admin@localhost)")
    serve.add_argument("--no-mirror", action="store_true",
                       help="do not create a JSON mirror for searching the bag")
    serve.set_defaults(func=cmd_serve)
    adduser = commands.add_parser("adduser", help="add an account with a password",
                                  description="Add an account to the site at URI.")
    adduser.add_argument("uri", metavar="URI", help="the database")
    adduser.add_argument("email", metavar="EMAIL")
    adduser.add_argument("--admin", action="store_true", help="an administrator")
    adduser.add_argument("--name", metavar="NAME", help="the display name")
    adduser.add_argument("--password-file", metavar="FILE", required=True,
                         help="the file holding the password (-: standard input)")
    adduser.set_defaults(func=cmd_adduser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status."""
    from amphora.errors import AmphoraError
    from amphora_kanban.errors import KanbanError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="kanban: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except (CommandError, KanbanError, AmphoraError, OSError) as exc:
        message = " ".join((str(exc).strip() or type(exc).__name__).split())
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{exc.filename}: {message}"
        print(f"kanban: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
