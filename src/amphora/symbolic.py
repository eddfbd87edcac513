"""Conflicts merged from the pickles' opcodes, for classes whose merge is known.

A write conflict is normally merged by the object's class (``_p_resolveConflict``, see
:func:`amphora.serialize.resolve_record`), which means unpickling, so the server leaves
it to the client and pays a round trip to it while the commit lock is held. For a few well-known classes
the merge is plain arithmetic on a state that is one number, and it can be made here,
reading the records with :mod:`pickletools` (nothing is imported, called or built but
the numbers):

``BTrees.Length.Length``
    the counter of ZODB applications (``len()`` of a BTree kept beside it, hit
    counters); its state is an int and its merge is ``committed + new - old``.

:func:`merge` is exact or gives up (None): the three records must name the same class
with the same class pickle (a ``GLOBAL``, protocols 1 to 3), each state must be a single
binary integer (text ints, which pickletools and the unpickler do not always read
alike, are not), and nothing else may be in the record. Any other record is left to the
class's own resolver, on the client.
"""
from __future__ import annotations

import pickle
import pickletools
import struct
from typing import Callable

__all__ = ["counter", "merge", "mergeable", "RULES"]


def _add(old: int, committed: int, new: int) -> int:
    return committed + new - old


#: ``(module, name)`` -> how three integer states merge
RULES: dict[tuple[str, str], Callable[[int, int, int], int]] = {
    ("BTrees.Length", "Length"): _add,
}

# What amphora's unpickler reads (protocols up to 3) exactly as pickletools does: the
# binary int opcodes (the text INT and LONG are read differently: "I010" is 8 or 10).
_INTS = frozenset({"BININT", "BININT1", "BININT2", "LONG1", "LONG4"})
_MEMO = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_PROTOCOLS = (2, 3)
_MAX_RECORD = 256  # a class pickle and one number are short
_GLOBAL_PICKLES: dict[bytes, tuple[str, str] | None] = {}  # class pickle -> name


def _class_of(head: bytes) -> tuple[str, str] | None:
    """(module, name) of a class pickle that holds nothing but the class, else None."""
    found = _GLOBAL_PICKLES.get(head)
    if found is not None or head in _GLOBAL_PICKLES:
        return found
    name = None
    try:
        for opcode, arg, _ in pickletools.genops(head):
            kind = opcode.name
            if kind == "GLOBAL" and name is None:
                module, _, attr = arg.partition(" ")
                name = (module, attr)
            elif kind == "PROTO" and arg in _PROTOCOLS or kind in _MEMO or kind == "STOP":
                pass
            else:
                name = None
                break
    except Exception:
        name = None
    if len(_GLOBAL_PICKLES) < 1000:
        _GLOBAL_PICKLES[head] = name
    return name


_SMALL = struct.Struct("<i")


def _short_state(state: bytes) -> int | None:
    """The integer of a protocol 2+ state pickle in the forms the pickler writes for an
    int (``K``, ``M``, ``J``, ``LONG1``), without pickletools; None: another form."""
    if len(state) < 5 or state[0] != 0x80 or state[1] not in _PROTOCOLS \
            or state[-1] != 0x2E:  # PROTO ... STOP
        return None
    code, body = state[2], state[3:-1]
    if code == 0x4B and len(body) == 1:  # BININT1
        return body[0]
    if code == 0x4D and len(body) == 2:  # BININT2
        return int.from_bytes(body, "little")
    if code == 0x4A and len(body) == 4:  # BININT
        return _SMALL.unpack(body)[0]
    if code == 0x8A and len(body) >= 1 and body[0] == len(body) - 1:  # LONG1
        return int.from_bytes(body[1:], "little", signed=True)
    return None


def _split(record: bytes) -> tuple[bytes, int] | None:
    """(class pickle, integer state) of a record made of exactly those two pickles."""
    # the class pickles met (a few): the common case (a copy of the keys: another thread
    # may add one meanwhile)
    for head in tuple(_GLOBAL_PICKLES):
        if record.startswith(head):
            number = _short_state(record[len(head):])
            if number is not None:
                return head, number
            break
    number = None
    try:
        for opcode, _, pos in pickletools.genops(record):
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
            elif kind != "PROTO" or arg not in _PROTOCOLS:
                return None
    except Exception:
        return None
    return None


def _ruled(record: bytes) -> tuple[bytes, int, Callable[[int, int, int], int]] | None:
    """The class pickle, the number and the rule of a record of a class with a rule."""
    split = _split(record) if len(record) <= _MAX_RECORD else None
    rule = None if split is None else RULES.get(_class_of(split[0]))  # type: ignore[arg-type]
    return None if rule is None else (*split, rule)  # type: ignore[misc]


def mergeable(record: bytes) -> bool:
    """Whether conflicts on ``record``'s object may be merged here (its class has a rule:
    the merge itself may still give up)."""
    return _ruled(record) is not None


def counter(record: bytes) -> tuple[bytes, int] | None:
    """The class pickle and the number of a record whose conflicts merge as a counter's
    (``committed + new - old``), or None: one whose merge may be done by anyone who can
    add, with the bytes of its class pickle compared and the number's opcode read (the
    PostgreSQL storage does it in SQL, see amphora.storage.postgresql)."""
    found = _ruled(record)
    return found[:2] if found is not None and found[2] is _add else None


def merge(old: bytes, committed: bytes, new: bytes) -> bytes | None:
    """The merged record of three records of one object (the state the writer read, the
    one committed meanwhile, the writer's), or None: no rule, or records it cannot read
    exactly."""
    if max(len(old), len(committed), len(new)) > _MAX_RECORD:
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
