"""Clients for the server tests: the protocol by hand (:class:`RawClient`), and what a
client storage sends or reads."""
from __future__ import annotations

import socket

from BTrees.Length import Length
from persistent.mapping import PersistentMapping

import amphora
from amphora.server import protocol as p
from counters import Tally
from serverprocess import ServerProcess


def raw_connection(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=30)


def hello(token: str | None = None, version: int = p.VERSION) -> bytes:
    return p.encode([p.HELLO, {"protocol": version, "token": token, "storage": ""}])


class RawClient:
    """The protocol by hand: requests, and what the server sends back but pushes, one at
    a time, in the order they come."""

    def __init__(self, server: ServerProcess, token: str | None = None):
        self.sock = raw_connection(server)
        self.decoder = p.FrameDecoder()
        self.pending: list = []
        self.ids = iter(range(1, 1000))
        self.sock.sendall(hello(token))
        self.welcome = self.next()
        assert self.welcome[0] == p.WELCOME

    def next(self) -> list:
        """The next message that is not a push."""
        while True:
            while self.pending:
                message = self.pending.pop(0)
                if message[0] != p.PUSH:
                    return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.pending.extend(self.decoder.feed(data))

    def request(self, method: str, *args) -> int:
        request_id = next(self.ids)
        self.sock.sendall(p.encode([p.REQUEST, request_id, method, list(args)]))
        return request_id

    def close(self) -> None:
        self.sock.close()


def stale_counter(server: ServerProcess, kind: type) -> tuple:
    """A counter of class ``kind`` served at 5, and what a late writer needs: ``(db, oid,
    committed serial, read serial)`` (it read the counter at 1)."""
    db = amphora.open(f"amphora://{server.address}")
    with db.transaction() as conn:
        conn.root()["counter"] = counter = kind(1)
    with db.transaction() as conn:
        conn.root()["counter"].change(4)
    oid = counter._p_oid
    history = db.storage.history(oid, 2)
    return db, oid, history[0]["tid"], history[1]["tid"]


def record_requests(db) -> list[str]:
    """The methods the client storage of ``db`` sends, from now on (under an encryption
    layer: its wrapped client's)."""
    sent: list[str] = []
    storage = getattr(db.storage, "storage", db.storage)
    call = storage._call
    storage._call = lambda method, *args, **kwargs: (sent.append(method),
                                                     call(method, *args, **kwargs))[1]
    return sent


def value_on(server: ServerProcess, key: str):
    """What a new client reads for ``key`` (nothing cached)."""
    db = amphora.open(f"amphora://{server.address}")
    try:
        with db.transaction() as conn:
            value = conn.root().get(key)
            if isinstance(value, (Length, Tally)):
                return value()
            return dict(value) if isinstance(value, PersistentMapping) else value
    finally:
        db.close()
