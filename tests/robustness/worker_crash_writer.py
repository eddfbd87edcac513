"""Helper process for test_crash.py: commits transactions in a loop until killed.

Usage: worker_crash_writer.py URI MAX_COUNT|- [PARTS]

Transaction i (note ``txn i``) writes, together:

- ``root['data'][i] = Record(i, payload, sha256(payload), [Part(i, 0..PARTS-1)])``
  (PARTS + 1 new objects, plus the IOBTree buckets that change; PARTS defaults to 3 and
  is kept in root['parts']),
- ``root['count'] = i + 1`` (the root),
- ``root['stats'].last_txn = i`` and ``root['stats'].total += i``.

So in every committed state: count == len(data), data's keys are 0..count-1, every
object written in transaction i carries i, and stats.total == count*(count-1)/2.

Prints ``READY`` once the database is open, then ``COMMITTED i`` (flushed, in one
write) right after each ``commit()`` returns. The sequence continues from root['count'],
so a restarted writer picks up where the killed one stopped. With MAX_COUNT it stops
when count reaches MAX_COUNT, closes the database and prints ``DONE``.
"""
import hashlib
import random
import sys

import transaction
from BTrees.IOBTree import IOBTree

import amphora
from robustness_support import Part, Record, Stats


def main() -> int:
    uri = sys.argv[1]
    max_count = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    parts_wanted = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    db = amphora.open(uri)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    txn = tm.begin()
    root = conn.root()
    if "data" not in root:
        txn.note("setup")
        root["data"] = IOBTree()
        root["stats"] = Stats()
        root["count"] = 0
        root["parts"] = parts_wanted
    n_parts = root["parts"]
    if txn.description:
        tm.commit()
    else:
        tm.abort()
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    while True:
        txn = tm.begin()
        root = conn.root()
        i = root["count"]
        if max_count is not None and i >= max_count:
            tm.abort()
            break
        txn.note(f"txn {i}")
        rng = random.Random(i)
        payload = rng.randbytes(rng.randrange(100, 4000))
        parts = [Part(i, j) for j in range(n_parts)]
        root["data"][i] = Record(i, payload, hashlib.sha256(payload).hexdigest(), parts)
        root["count"] = i + 1
        stats = root["stats"]
        stats.last_txn = i
        stats.total += i
        tm.commit()
        out.write(f"COMMITTED {i}\n")
        out.flush()
    conn.close()
    db.close()
    out.write("DONE\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
