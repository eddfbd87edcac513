"""Running the app under uvicorn on a socket of our own, as ``amphora kanban serve`` does.

:func:`listening_socket` binds first (so that the command knows the real port, and
reports a taken address as its own error); :func:`run` serves the app on it, prints the
listening line once uvicorn accepts connections, and stops cleanly on SIGTERM or SIGINT:
the live-update streams are ended at once (they would keep a graceful shutdown waiting)
and the process exits with status 0.
"""
from __future__ import annotations

import contextlib
import signal
import socket
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette

__all__ = ["listening_socket", "run"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE = 5  # seconds a stop waits for requests in progress
KEEP_ALIVE = 75  # seconds an idle kept-alive connection stays open


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


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, url: str):
        super().__init__(config)
        self.kanban = app
        self.url = url

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(f"kanban: listening on {self.url}", flush=True)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.kanban.state.live.close_soon()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # (uvicorn's own raises the signal again once stopped: a clean stop on SIGTERM
        # would then end as killed by it, not with status 0)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(app: Starlette, sock: socket.socket, url: str) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT (``url`` is what the listening
    line says)."""
    # Kept-alive connections stay open longer than clients keep idle ones (httpx and many
    # others: 5 s, uvicorn's own default too): a server that closes first can close a
    # connection just as a client sends a request on it, which then fails unanswered.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACE, timeout_keep_alive=KEEP_ALIVE)
    _Server(config, app, url).run(sockets=[sock])
