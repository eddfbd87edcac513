"""The C fast path (amphora/_transcoder.c) against the Python transcoder.

The fast path handles the common records and gives up (None) on the rest; when it gives
a document, it must be exactly the Python transcoder's, byte for byte. Generated data
(every pickle protocol, references, slots, instances, BTrees, damaged records) checks
that; a few tests check that the fast path does take the common records, so that the
speed it is for is not lost to a silent give-up.
"""
from __future__ import annotations

import datetime
import decimal
import io
import pickle

import pytest
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree, OOBucket, OOSet, OOTreeSet
from hypothesis import given, settings, strategies as st
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from amphora import jsonpickle
from jsonpickle_support import (Slotted, Thing, amphora_record, damaged, pickled, target,
                                thing, zodb_records)
from test_jsonpickle_properties import keys, plain, scalars, with_refs

pytestmark = pytest.mark.skipif(not jsonpickle.COMPILED,
                                reason="amphora._transcoder is not built (no C compiler "
                                       "when amphora was installed)")

if jsonpickle.COMPILED:
    from amphora._transcoder import transcode as fast, transcode_many as fast_many


def python(record: bytes) -> tuple[str, str]:
    return jsonpickle._record_to_json(record)


def agrees(record: bytes) -> tuple[str, str] | None:
    """The fast path's answer, after checking it against the Python transcoder's."""
    found = fast(record)
    if found is not None:
        assert found == python(record), record
    return found


class Point:
    """A plain object inside a state (NEWOBJ and BUILD)."""

    def __init__(self, x, y):
        self.x, self.y = x, y


class Pair(tuple):
    """Made by REDUCE (a tuple subclass)."""

    def __reduce__(self):
        return (Pair, (tuple(self),))


instances = st.builds(Point, scalars, scalars) | st.builds(lambda a, b: Pair((a, b)),
                                                           scalars, scalars)


@settings(max_examples=300, deadline=None)
@given(with_refs)
def test_amphora_records_agree(value):
    agrees(amphora_record(thing(value=value)))


@settings(max_examples=200, deadline=None)
@given(plain, st.sampled_from(range(6)))
def test_every_protocol_agrees(value, protocol):
    agrees(pickled(Thing, {"value": value}, protocol))


@settings(max_examples=100, deadline=None)
@given(st.lists(instances | scalars, max_size=4), st.sampled_from(range(2, 6)))
def test_instances_agree(values, protocol):
    agrees(pickled(Thing, {"values": values}, protocol))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, scalars, max_size=5), st.dictionaries(keys, scalars, max_size=5))
def test_slots_and_dict_states_agree(attributes, more):
    obj = Slotted()
    obj.size = attributes
    for name, value in more.items():
        if name.isidentifier() and not name.startswith("_"):  # attributes, not internals
            setattr(obj, name, value)
    agrees(amphora_record(obj))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), scalars, max_size=80))
def test_large_mappings_agree(mapping):
    agrees(amphora_record(PersistentMapping(mapping)))


@settings(max_examples=200, deadline=None)
@given(with_refs, st.data())
def test_damaged_records_agree(value, data):
    agrees(damaged(amphora_record(thing(value=value)), data))


def btrees_records() -> list[bytes]:
    small = OOBTree({f"k{i}": target(i + 1) for i in range(5)})
    large = IOBTree({i: str(i) for i in range(300)})
    records = [amphora_record(OOBucket({"a": 1, "b": target(7)})),
               amphora_record(OOSet(["x", "y"])), amphora_record(small),
               amphora_record(OOTreeSet(["p", "q"])), amphora_record(OOBTree())]
    records += zodb_records(large, OOBTree({i: i for i in range(1000)}))
    return records


def test_common_records_take_the_fast_path():
    when = datetime.datetime(2026, 5, 1, 12, 30, 0, 250)
    records = [
        amphora_record(thing(name="item-000001", count=3, attr=1, data=b"\x00\xff" * 100)),
        amphora_record(thing(title="tab\tquote\"back\\slash é ☃", score=-2.5e-7, ok=True,
                             nothing=None, big=2**63 - 1, small=-2**63)),
        amphora_record(thing(when=when, day=when.date(), at=when.time(),
                             price=decimal.Decimal("9.90"), tags={"a"}, frozen=frozenset())),
        amphora_record(thing(parent=target(5), items=[1, (2, 3), {"@id": 4}], point=Point(1, 2))),
        amphora_record(PersistentMapping({"a": [1, 2]})),
        amphora_record(PersistentList([1, "two"])),
        *btrees_records(),
        *zodb_records(thing(child=thing(n=1), when=when)),
    ]
    for record in records:
        assert agrees(record) is not None, record


def test_non_finite_floats_and_escapes():
    record = amphora_record(thing(nan=float("nan"), inf=float("inf"), ninf=float("-inf"),
                                  control="\x01\x1f\x7f", key={"@": 1, "@@": 2}))
    class_name, text = agrees(record)
    assert text == ('{"nan":{"@float":"nan"},"inf":{"@float":"inf"},'
                    '"ninf":{"@float":"-inf"},"control":"\\u0001\\u001f\x7f",'
                    '"key":{"@@":1,"@@@":2}}')


def test_the_rare_cases_are_left_to_python():
    shared = [1, 2]
    rare = [
        amphora_record(thing(text="nul\x00")),                  # the @str form
        amphora_record(thing(mapping={1: "one"})),               # the @dict form
        amphora_record(thing(a=shared, b=shared)),               # shared through the memo
        amphora_record(thing(big=2**64)),                        # the @int form
        amphora_record(thing(span=datetime.timedelta(days=1))),  # timedelta
        amphora_record(thing(when=datetime.datetime(2026, 1, 1,
                                                    tzinfo=datetime.timezone.utc))),
        pickled(Thing, {"value": 1}, 0),                         # protocol 0 opcodes
        b"not a record",
        b"",
    ]
    for record in rare:
        assert fast(record) is None, record
        assert jsonpickle.record_to_json(record) == python(record)


def test_many_at_once():
    # made without the GIL, except the records holding floats (done after, with it)
    records = btrees_records() + [amphora_record(thing(score=2.5, when=datetime.date.today())),
                                  amphora_record(thing(text="nul\x00")), b"garbage"]
    found = fast_many(records)
    assert found[-2] is None and found[-1] is None
    assert found[:-2] == [python(record) for record in records[:-2]]
    assert jsonpickle.records_to_json(records) == [python(record) for record in records]
    assert jsonpickle.records_to_json([memoryview(record) for record in records]) == \
        [python(record) for record in records]


def test_a_record_can_be_any_buffer():
    record = amphora_record(thing(n=1))
    assert fast(memoryview(record)) == fast(bytearray(record)) == python(record)
    with pytest.raises(TypeError):
        fast("not bytes")


def test_big_records_and_deep_nesting():
    big = amphora_record(thing(values=list(range(100000)), text="x" * 3000000))
    assert agrees(big) is not None
    deep: list = []
    for _ in range(150):
        deep = [deep]
    record = amphora_record(thing(deep=deep))
    assert fast(record) is None  # deeper than the fast path goes
    assert jsonpickle.record_to_json(record) == python(record)
    out = io.BytesIO()
    pickle.Pickler(out, 3).dump(Thing)
    assert fast(out.getvalue()) is None  # one pickle is not a record
