"""Helper process for test_multiprocess.py: watches the shared counter while writers run.

Usage: worker_reader.py URI TARGET GO_FILE

At every transaction boundary it reads the counter and the writers' lists. Each writer
transaction increments the counter and appends to one list together, so in every
snapshot counter == sum of list lengths, and the counter never decreases from one
snapshot to the next. Stops when the counter reaches TARGET; prints one JSON line and
exits 1 if anything was violated.
"""
import json
import os
import sys
import time

import transaction

import amphora


def counter_value(counter) -> int:
    return counter() if callable(counter) else counter.value


def main() -> int:
    uri, target, go_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    db = amphora.open(uri)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    print("READY", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.01)
    last = -1
    seen = set()
    observations = 0
    violations = []
    deadline = time.monotonic() + 240
    while True:
        tm.begin()
        root = conn.root()
        value = counter_value(root["counter"])
        lengths = {w: len(lst) for w, lst in root["lists"].items()}
        tm.abort()
        observations += 1
        seen.add(value)
        if value < last:
            violations.append(f"counter went back from {last} to {value}")
        if value != sum(lengths.values()):
            violations.append(f"inconsistent snapshot: counter {value}, list lengths {lengths}")
        last = max(last, value)
        if value >= target or len(violations) > 20:
            break
        if time.monotonic() > deadline:
            violations.append(f"timed out at counter {value} of {target}")
            break
        time.sleep(0.002)
    print(json.dumps({"observations": observations, "distinct": len(seen),
                      "last": last, "violations": violations}), flush=True)
    conn.close()
    db.close()
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
