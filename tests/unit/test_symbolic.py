"""Conflicts merged from the pickles' opcodes (amphora.symbolic): a merge of
``BTrees.Length.Length`` records is exactly what the class's own resolver gives, and any
record that is not plainly "the Length class, then one int" is given up on (None)."""
from __future__ import annotations

import io
import pickle

import pytest
from BTrees.Length import Length
from hypothesis import HealthCheck, given, settings, strategies as st
from persistent import Persistent

import amphora
from amphora.serialize import resolve_record
from amphora.symbolic import merge, mergeable
from amphora.utils import p64

HEAD = pickle.dumps(Length, 3)  # the class pickle amphora writes for a Length
MAX_TID = b"\xff" * 8
OLD, COMMITTED = p64(1), p64(2)

ints = st.integers() | st.integers(min_value=-2**200, max_value=2**200) \
    | st.sampled_from([0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -2**31 - 1,
                       2**63 - 1, 2**63, 2**64, -2**64, 2**100])


class Counter(Persistent):
    """A Tally-like class: its conflicts have no rule here."""

    def __init__(self, value: int = 0):
        self.value = value

    def _p_resolveConflict(self, old, committed, new):
        return {"value": committed["value"] + new["value"] - old["value"]}


def record(state, head: bytes = HEAD, protocol: int = 3) -> bytes:
    """A record as amphora writes one: the class pickle, then the state's."""
    return head + pickle.dumps(state, protocol)


def read(data: bytes) -> tuple:
    """(class, state) of a record, really unpickled; raises if it is not exactly two
    pickles."""
    file = io.BytesIO(data)
    unpickler = pickle.Unpickler(file)
    klass, state = unpickler.load(), unpickler.load()
    if file.read():
        raise ValueError("bytes after the state")
    return klass, state


def resolved_state(old: bytes, committed: bytes, new: bytes):
    """What the class's own resolver makes of the three records (the client's merge)."""
    records = {OLD: old, COMMITTED: committed}
    data = resolve_record(p64(7), COMMITTED, OLD, new, lambda _, serial: records[serial])
    return None if data is None else read(data)[1]


class _Committed:
    """Records of Length objects really committed through amphora (one database)."""

    def __init__(self):
        self.db = None

    def __call__(self, value: int) -> bytes:
        if self.db is None:
            self.db = amphora.open("memory://")
        with self.db.transaction() as conn:
            counter = conn.root()["counter"] = Length(value)
        return self.db.storage.loadBefore(counter._p_oid, MAX_TID)[0]


committed_record = _Committed()


@pytest.fixture(scope="module", autouse=True)
def _close_database():
    yield
    if committed_record.db is not None:
        committed_record.db.close()


# -- exact merges --------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 5, -3, 2**31, 2**64 + 1, -2**70])
def test_a_committed_length_record_is_the_class_pickle_then_the_int(value):
    assert committed_record(value) == record(value)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=ints, committed=ints, new=ints, committed_ones=st.lists(st.booleans(),
                                                                     min_size=3, max_size=3))
def test_a_merge_is_what_the_class_resolver_gives_and_keeps_the_class_pickle(
        old, committed, new, committed_ones):
    records = [committed_record(value) if through_db else record(value)
               for value, through_db in zip((old, committed, new), committed_ones)]
    merged = merge(*records)
    assert merged is not None
    assert merged.startswith(HEAD)
    klass, state = read(merged)
    assert klass is Length
    assert type(state) is int
    assert state == Length()._p_resolveConflict(old, committed, new) == committed + new - old
    assert state == resolved_state(*records)
    assert merged[len(HEAD):] == pickle.dumps(state, 3)  # the state at protocol 3


@pytest.mark.parametrize("protocol", [1, 2])
@pytest.mark.parametrize("values", [(1, 5, 3), (-7, 2**70, -2**65), (0, 0, 0)])
def test_records_of_protocols_1_and_2_are_merged_exactly(protocol, values):
    """Class pickle and state written at protocol 1 or 2 (binary ints): merged (head kept
    as is, state at protocol 3), to what the class's resolver gives."""
    head = pickle.dumps(Length, protocol)
    if protocol == 1 and any(abs(value) >= 2**31 for value in values):
        values = tuple(value % 1000 for value in values)  # else a text LONG: see below
    records = [record(value, head, protocol) for value in values]
    merged = merge(*records)
    assert merged is not None and merged.startswith(head)
    klass, state = read(merged)
    old, committed, new = values
    assert klass is Length and state == committed + new - old == resolved_state(*records)


@pytest.mark.parametrize("protocol, values", [(0, (1, 5, 3)), (1, (1, 2**40 + 5, 3))])
def test_records_with_text_ints_are_left_to_the_client(protocol, values):
    """Text ints (protocol 0, and protocol 1's big ones) are read differently by
    pickletools and the unpickler; the symbolic merge takes binary ints only, and the
    class's resolver does the rest."""
    head = pickle.dumps(Length, protocol)
    records = [record(value, head, protocol) for value in values]
    assert resolved_state(*records) == values[1] + values[2] - values[0]
    assert merge(*records) is None


# -- giving up -------------------------------------------------------------------------------

def test_another_class_with_an_int_state_is_not_merged():
    head = pickle.dumps(Counter, 3)
    assert merge(record(1, head), record(5, head), record(3, head)) is None
    lookalike = b"\x80\x03cBTrees.Length\nLengths\nq\x00."
    assert merge(record(1, lookalike), record(5, lookalike), record(3, lookalike)) is None


@pytest.mark.parametrize("state", [True, False, (3,), 3.0, "3", b"3", None, [3], {"n": 3}],
                         ids=repr)
@pytest.mark.parametrize("protocol", [0, 2, 3])
@pytest.mark.parametrize("where", ["old", "committed", "new"])
def test_a_length_whose_state_is_not_an_int_is_not_merged(state, protocol, where):
    records = {"old": record(1), "committed": record(5), "new": record(3)}
    records[where] = record(state, pickle.dumps(Length, protocol), protocol) \
        if protocol != 3 else record(state)
    assert merge(records["old"], records["committed"], records["new"]) is None


@pytest.mark.parametrize("where", ["old", "committed", "new"])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_different_class_pickles_are_not_merged(where, protocol):
    values = {"old": 1, "committed": 5, "new": 3}
    records = {key: record(value) for key, value in values.items()}
    records[where] = record(values[where], pickle.dumps(Length, protocol))
    assert merge(records["old"], records["committed"], records["new"]) is None


@pytest.mark.parametrize("state", [
    b"\x80\x03K\x03K\x04.",        # a second int
    b"\x80\x03K\x03\x85.",         # made a tuple
    b"\x80\x03K\x030.",            # popped
    b"\x80\x03K\x03N.",            # another value pushed
    b"\x80\x03K\x03h\x00.",        # a memo read
    b"\x80\x03(K\x03.",            # a mark
    b"\x80\x03K\x03.K\x04.",       # a third pickle
    b"\x80\x03K\x03.\x00",         # a byte after the record
    b"\x80\x03K\x03",              # no STOP
    b"\x80\x03.",                  # no state
], ids=repr)
@pytest.mark.parametrize("where", ["old", "committed", "new"])
def test_extra_or_missing_opcodes_are_not_merged(state, where):
    records = {"old": record(1), "committed": record(5), "new": record(3)}
    records[where] = HEAD + state
    assert merge(records["old"], records["committed"], records["new"]) is None


@pytest.mark.parametrize("cut", [1, 2, 5, len(HEAD) - 1, len(HEAD), len(HEAD) + 1,
                                 len(HEAD) + 2])
def test_truncated_records_are_not_merged(cut):
    damaged = record(3)[:cut]
    assert merge(record(1), record(5), damaged) is None
    assert merge(damaged, record(5), record(3)) is None
    assert merge(record(1), damaged, record(3)) is None
    assert merge(b"", b"", b"") is None


def test_records_over_256_bytes_are_not_merged():
    big = 2**2100  # a LONG4 state of some 263 bytes
    assert len(record(big)) > 256
    assert merge(record(1), record(5), record(big)) is None
    assert not mergeable(record(big))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pickletools on bad STRINGs
@settings(max_examples=1000, deadline=None)
@given(values=st.tuples(ints, ints, ints), which=st.integers(0, 2), data=st.data())
def test_damaged_bytes_never_raise(values, which, data):
    """Random byte changes (replaced, inserted, deleted, cut): merge returns None or a
    record that begins with the class pickle, never raises."""
    records = [record(value) for value in values]
    target = bytearray(records[which])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        position = data.draw(st.integers(0, max(len(target) - 1, 0)))
        if action == "replace" and target:
            target[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            target[position:position] = data.draw(st.binary(min_size=1, max_size=3))
        elif action == "delete" and target:
            del target[position]
        elif action == "cut":
            del target[position:]
    records[which] = bytes(target)
    merged = merge(*records)
    assert merged is None or merged.startswith(HEAD)
    mergeable(bytes(target))  # never raises either


@pytest.mark.parametrize("state", [
    b"\x80\xffK\x03.",                                      # protocol 255
    b"\x80\x03\x95\x10\x00\x00\x00\x00\x00\x00\x00K\x03.",  # a frame longer than the rest
    b"L010L\n.",                                            # int('010', 0) fails
    b"\x80\x04K\x03.",                                      # protocol 4 (zodbpickle reads <= 3)
], ids=["bad-protocol", "bad-frame", "LONG-leading-zero", "protocol-4"])
def test_records_the_unpickler_refuses_are_not_merged(state):
    new = HEAD + state
    assert resolved_state(record(1), record(5), new) is None  # the client cannot read it
    assert merge(record(1), record(5), new) is None


def test_a_protocol_0_int_with_a_leading_zero_is_merged_as_the_unpickler_reads_it():
    new = HEAD + b"I010\n."
    assert read(new)[1] == 8
    assert resolved_state(record(1), record(5), new) == 12
    merged = merge(record(1), record(5), new)
    assert merged is None or read(merged)[1] == 12


# -- mergeable -------------------------------------------------------------------------------

def test_mergeable_is_true_for_length_records_only():
    assert mergeable(record(3))
    assert mergeable(committed_record(2**70))
    assert mergeable(record(-5, pickle.dumps(Length, 2), 2))
    assert not mergeable(record(-5, pickle.dumps(Length, 0), 0))  # text ints: the client's
    assert not mergeable(record({"value": 3}, pickle.dumps(Counter, 3)))  # Tally-like
    assert not mergeable(record(3, pickle.dumps(Counter, 3)))
    assert not mergeable(record(True))
    assert not mergeable(record((3,)))
    assert not mergeable(HEAD)
    assert not mergeable(b"")
    assert not mergeable(b"\x00" * 300)
    long_record = record(3) + b"\x00" * 300
    assert len(long_record) > 256 and not mergeable(long_record)
    assert not mergeable(record(2**2100))


# -- resolve_record uses it ------------------------------------------------------------------

def test_resolve_record_merges_a_length_from_its_opcodes_and_others_with_their_class(
        monkeypatch):
    """The storages' resolver merges a Length without unpickling it (not even the class's
    ``_p_resolveConflict`` is called), and any other class with its own resolver."""
    def refuse(*args):
        raise AssertionError("the class's resolver was called")
    monkeypatch.setattr(Length, "_p_resolveConflict", refuse)
    assert resolved_state(record(1), record(5), record(3)) == 7
    assert resolved_state(record(1), record(5), HEAD + b"I3\n.") is None  # text int: the class's
    head = pickle.dumps(Counter, 3)
    assert resolved_state(record({"value": 1}, head), record({"value": 5}, head),
                          record({"value": 3}, head)) == {"value": 7}


def test_resolve_record_reads_each_state_once_when_the_opcodes_do_not_merge():
    """Committed records whose class pickle is not the writer's (protocol 2, as another
    writer may have made them): the opcodes give up, the class merges, and the two
    states are read once each."""
    head = pickle.dumps(Length, 2)
    records = {OLD: record(1, head, 2), COMMITTED: record(5, head, 2)}
    asked = []

    def load_serial(oid, serial):
        asked.append(serial)
        return records[serial]
    data = resolve_record(p64(7), COMMITTED, OLD, record(3), load_serial)
    assert read(data)[1] == 7
    assert sorted(asked) == [OLD, COMMITTED]
