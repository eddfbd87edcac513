"""Helper process for test_multiprocess.py: increments a shared counter N times.

Usage: worker_counter.py URI WORKER_ID N MODE GO_FILE

MODE ``plain``: the counter is a robustness_support.Counter (no conflict resolution);
conflicts are retried with ``transaction_manager.attempts()``.
MODE ``length``: the counter is a BTrees.Length.Length (resolves conflicts); conflicts
(there should be none) are retried with a loop catching amphora.ConflictError.

In each transaction the worker also appends to its own list, root['lists'][WORKER_ID].
It prints READY once the database is open, waits until GO_FILE exists, does its work
and prints one JSON line with its statistics.
"""
import json
import os
import random
import sys
import time

import transaction

import amphora


def main() -> int:
    uri, worker, count, mode, go_file = sys.argv[1:6]
    worker, count = int(worker), int(count)
    db = amphora.open(uri)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            print("no go file", file=sys.stderr)
            return 2
        time.sleep(0.01)
    conflicts = 0
    rng = random.Random(worker)
    for i in range(count):
        if mode == "plain":
            for n, attempt in enumerate(tm.attempts(10_000)):
                conflicts += n > 0
                with attempt:
                    root = conn.root()
                    root["counter"].value += 1
                    root["lists"][worker].append(i)
        elif mode == "length":
            tries = 0
            while True:
                tm.begin()
                root = conn.root()
                root["counter"].change(1)
                root["lists"][worker].append(i)
                try:
                    tm.commit()
                    break
                except amphora.ConflictError:
                    tm.abort()
                    conflicts += 1
                    tries += 1
                    if tries > 10_000:
                        raise
                    time.sleep(rng.uniform(0, 0.002 * min(tries, 10)))
        else:
            raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"worker": worker, "conflicts": conflicts, "done": count}), flush=True)
    conn.close()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
