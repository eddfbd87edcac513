"""Conflicts merged from the pickles' opcodes, for classes whose merge is known.

A write conflict is normally merged by the object's class (``_p_resolveConflict``, see
:mod:`amphora.conflict`), which means unpickling, so the server leaves it to the client
and pays a round trip to it while the commit lock is held. For a few well-known classes
the merge is plain arithmetic on a state that is one number, and it can be made here,
reading the records with :mod:`pickletools` (nothing is imported, called or built but
the numbers):

``BTrees.Length.Length``
    the counter of ZODB applications (``len()`` of a BTree kept beside it, hit
    counters); its state is an int and its merge is ``committed + new - old``.

:func:`merge` is exact or gives up (None): the three records must name the same class
with the same class pickle, each state must be a single integer, and nothing else may be
in the record. Any other record is left to the class's own resolver.
"""
from __future__ import annotations

import pickle
import pickletools
from typing import Callable

__all__ = ["merge", "RULES"]


def _add(old: int, committed: int, new: int) -> int:
    return committed + new - old


#: ``(module, name)`` -> how three integer states merge
RULES: dict[tuple[str, str], Callable[[int, int, int], int]] = {
    ("BTrees.Length", "Length"): _add,
}

_INTS = frozenset({"INT", "LONG", "BININT", "BININT1", "BININT2", "LONG1", "LONG4"})
_MEMO = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_GLOBAL_PICKLES: dict[bytes, tuple[str, str] | None] = {}  # class pickle -> name


def _class_of(head: bytes) -> tuple[str, str] | None:
    """(module, name) of a class pickle that holds nothing but the class, else None."""
    found = _GLOBAL_PICKLES.get(head)
    if found is not None or head in _GLOBAL_PICKLES:
        return found
    name = None
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(head):
            kind = opcode.name
            if kind == "GLOBAL" and name is None and not strings:
                module, _, attr = arg.partition(" ")
                name = (module, attr)
            elif kind in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and name is None:
                strings.append(arg)
            elif kind == "STACK_GLOBAL" and name is None and len(strings) == 2:
                name = (strings[0], strings[1])
            elif kind not in _MEMO and kind not in ("PROTO", "FRAME", "STOP"):
                name = None
                break
    except Exception:
        name = None
    if len(_GLOBAL_PICKLES) < 1000:
        _GLOBAL_PICKLES[head] = name
    return name


def _split(record: bytes) -> tuple[bytes, int] | None:
    """(class pickle, integer state) of a record made of exactly those two pickles."""
    number = None
    try:
        ops = pickletools.genops(record)
        for opcode, _, pos in ops:
            if opcode.name == "STOP":
                head_end = pos + 1
                break
        else:
            return None
        for opcode, arg, pos in pickletools.genops(record[head_end:]):
            kind = opcode.name
            if kind in _INTS and number is None:
                number = arg
            elif kind == "STOP":
                if number is None or head_end + pos + 1 != len(record) \
                        or type(number) is not int:
                    return None
                return record[:head_end], number
            elif kind not in ("PROTO", "FRAME") and kind not in _MEMO:
                return None
    except Exception:
        return None
    return None


def mergeable(record: bytes) -> bool:
    """Whether conflicts on ``record``'s object may be merged here (its class has a rule:
    the merge itself may still give up)."""
    if len(record) > 256:  # a class pickle and one number are short
        return False
    split = _split(record)
    return split is not None and _class_of(split[0]) in RULES


def merge(old: bytes, committed: bytes, new: bytes) -> bytes | None:
    """The merged record of three records of one object (the state the writer read, the
    one committed meanwhile, the writer's), or None: no rule, or records it cannot read
    exactly."""
    if len(new) > 256:
        return None
    parts = [_split(record) for record in (old, committed, new)]
    if None in parts:
        return None
    (head, old_n), (committed_head, committed_n), (new_head, new_n) = parts  # type: ignore
    if not head == committed_head == new_head:
        return None
    rule = RULES.get(_class_of(head))  # type: ignore[arg-type]
    if rule is None:
        return None
    merged = rule(old_n, committed_n, new_n)
    return head + pickle.dumps(merged, 3)
