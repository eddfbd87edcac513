"""``amphora serve`` with its memory storage taken for a remote one (``is_remote``), so
that the server makes every storage call in threads, as for PostgreSQL: the tests run
the threaded commit path without a PostgreSQL server."""
from __future__ import annotations

import sys

from amphora.cli import main
from amphora.storage.memory import MemoryStorage

if __name__ == "__main__":
    MemoryStorage.is_remote = True
    sys.exit(main(sys.argv[1:]))
