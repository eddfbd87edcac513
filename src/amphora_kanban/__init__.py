"""The Kanban application's model: persistent classes that enforce the board's rules.

Sites hold boards and accounts; a board holds states (editable data), cards (features
and their tasks), an archive, and a change log for live updates. The model knows
nothing of HTTP: a handler parses, authorises, calls one model method, commits and
answers, turning :class:`KanbanError` subclasses into statuses in one place.

>>> import amphora, amphora_kanban
>>> db = amphora.open("memory://")
>>> with db.transaction() as conn:
...     site = conn.root.site = amphora_kanban.Site("Example")
...     board = site.add_board("team", "Team board")
...     feature = board.add_card({"title": "Sign-up"}).card
...     board.progress(feature.id)
{'complete': 0, 'total': 0}
"""
from amphora_kanban.board import Board, Result
from amphora_kanban.card import Card
from amphora_kanban.changes import ChangeLog
from amphora_kanban.errors import BadInput, KanbanError, NotFound, RuleViolation
from amphora_kanban.metrics import (cumulative_flow, cycle_time, flow_metrics, lead_time,
                                    throughput)
from amphora_kanban.ordering import key_between
from amphora_kanban.site import ROLES, Site, User
from amphora_kanban.state import DEFAULT_STATES, State, WipLimit
from amphora_kanban.transfer import export_board, import_board

__all__ = [
    "BadInput", "Board", "Card", "ChangeLog", "DEFAULT_STATES", "KanbanError", "NotFound",
    "ROLES", "Result", "RuleViolation", "Site", "State", "User", "WipLimit",
    "cumulative_flow", "cycle_time", "export_board", "flow_metrics", "import_board",
    "key_between", "lead_time", "throughput",
]
