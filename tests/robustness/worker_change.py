"""Helper process for test_multiprocess.py: sets attributes of objects in the root.

Usage: worker_change.py URI NAME=VALUE [NAME=VALUE ...]

Sets ``root[NAME].value = int(VALUE)`` for each pair, in one transaction.
"""
import sys

import amphora


def main() -> int:
    uri, pairs = sys.argv[1], sys.argv[2:]
    db = amphora.open(uri)
    with db.transaction() as conn:
        root = conn.root()
        for pair in pairs:
            name, value = pair.split("=")
            root[name].value = int(value)
    db.close()
    print("CHANGED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
