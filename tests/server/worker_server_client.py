"""A client process for the server tests.

``counter HOST:PORT N``: add 1 to the root's ``counter`` (a conflict-resolving
``Length``) N times, one transaction each, retrying conflicts and disconnections; prints
``done``.

``writer HOST:PORT``: commit forever, each transaction setting ``root['n'] = k`` and
``root[k] = k`` for k = 1, 2, ...; after each commit prints ``committed k`` (so the test
knows which commits the server acknowledged). Retries disconnections.
"""
from __future__ import annotations

import sys
import time

import transaction

import amphora
from amphora.errors import ConflictError
from amphora.storage.client import ClientDisconnected


def retrying(db, work) -> None:
    for _ in range(10000):
        try:
            with db.transaction() as conn:
                work(conn)
            return
        except (ConflictError, ClientDisconnected):
            time.sleep(0.001)
    raise SystemExit("gave up")


def counter(address: str, times: int) -> None:
    db = amphora.open(f"amphora://{address}")
    for _ in range(times):
        retrying(db, lambda conn: conn.root()["counter"].change(1))
    db.close()
    print("done", flush=True)


def writer(address: str) -> None:
    db = amphora.open(f"amphora://{address}", wait_timeout=60)
    k = 0
    while True:
        k += 1

        def work(conn, k=k):
            conn.root()["n"] = k
            conn.root()[k] = k
        retrying(db, work)
        print(f"committed {k}", flush=True)


if __name__ == "__main__":
    transaction.manager.explicit = False
    if sys.argv[1] == "counter":
        counter(sys.argv[2], int(sys.argv[3]))
    else:
        writer(sys.argv[2])
