"""``python -m amphora_kanban``: the ``amphora kanban`` command."""
import sys

from amphora_kanban.cli import main

sys.exit(main())
