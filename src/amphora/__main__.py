"""``python -m amphora``: the ``amphora`` command."""
import sys

from amphora.cli import main

sys.exit(main())
