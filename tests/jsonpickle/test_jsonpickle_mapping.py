"""The JSON mapping of ``amphora.jsonpickle``, rule by rule, on records written by
amphora's ObjectWriter, by ZODB's own, and by hand (Python 2 pickles)."""
from __future__ import annotations

import datetime
import decimal
import json
import pickle
import uuid
from collections import OrderedDict

import pytest
from BTrees.IOBTree import IOBTree
from BTrees.OOBTree import OOBTree, OOBucket, OOSet, OOTreeSet
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping
from persistent.wref import WeakRef

from amphora.jsonpickle import Markup, json_to_value
from jsonpickle_support import (
    Slotted, Thing, amphora_record, document, pickled, state_of, target, thing, zodb_records)

REF_CLASS = "jsonpickle_support.Target"


class Point:
    """A plain (not persistent) class, pickled inside states."""

    def __init__(self, x, y):
        self.x = x
        self.y = y


class Pair(tuple):
    def __new__(cls, a, b):
        return super().__new__(cls, (a, b))

    def __getnewargs__(self):
        return tuple(self)


class Bag(list):
    pass


def test_the_class_name_is_returned_beside_the_state():
    class_name, doc = document(amphora_record(thing(title="hello")))
    assert class_name == "jsonpickle_support.Thing"
    assert doc == {"title": "hello"}


def test_plain_values():
    assert state_of(thing(n=None, t=True, f=False, i=-7, big=2**40, x=1.5, s="été",
                          items=[1, [2, "x"]])) == {
        "n": None, "t": True, "f": False, "i": -7, "big": 2**40, "x": 1.5, "s": "été",
        "items": [1, [2, "x"]]}


def test_ints_outside_64_bits_are_strings():
    assert state_of(thing(a=2**63 - 1, b=-2**63, c=2**63, d=-2**70)) == {
        "a": 2**63 - 1, "b": -2**63, "c": {"@int": str(2**63)}, "d": {"@int": str(-2**70)}}


def test_non_finite_floats_are_marked():
    doc = state_of(thing(a=float("nan"), b=float("inf"), c=float("-inf"), d=-0.0))
    assert doc == {"a": {"@float": "nan"}, "b": {"@float": "inf"}, "c": {"@float": "-inf"},
                   "d": -0.0}


def test_bytes_are_base64():
    assert state_of(thing(b=b"\x00\xffab", e=b"")) == {
        "b": {"@bytes": "AP9hYg=="}, "e": {"@bytes": ""}}


def test_strings_sql_cannot_store_are_base64():
    doc = state_of(thing(nul="a\x00b", lone="x\udc80y"))
    assert doc == {"nul": {"@str": "YQBi"}, "lone": {"@str": "eO2ygHk="}}
    assert json_to_value(doc) == {"nul": "a\x00b", "lone": "x\udc80y"}


def test_tuples_sets_and_frozensets_are_marked_arrays():
    doc = state_of(thing(t=(1, "a"), e=(), s={3}, f=frozenset(["x"]), es=set()))
    assert doc == {"t": {"@tuple": [1, "a"]}, "e": {"@tuple": []}, "s": {"@set": [3]},
                   "f": {"@frozenset": ["x"]}, "es": {"@set": []}}


def test_dicts_with_other_keys_are_pairs():
    doc = state_of(thing(d={"a": 1, 2: "b", (3, 4): None, "@x": 5}))
    assert doc == {"d": {"@dict": [["a", 1], [2, "b"], [{"@tuple": [3, 4]}, None],
                                   ["@x", 5]]}}


def test_a_dict_turns_into_pairs_when_a_later_key_is_not_a_string():
    # The keys before the first non-string key were escaped as object keys; as pair
    # values they are the user's keys again.
    doc = state_of(thing(d={"@a": 1, "b": 2, 3: 4}))
    assert doc == {"d": {"@dict": [["@a", 1], ["b", 2], [3, 4]]}}


def test_keys_that_look_like_markup_are_escaped():
    doc = state_of(thing(d={"@ref": 1, "@@x": 2, "plain": 3, "@": 4}))
    assert doc == {"d": {"@@ref": 1, "@@@x": 2, "plain": 3, "@@": 4}}
    assert json_to_value(doc) == {"d": {"@ref": 1, "@@x": 2, "plain": 3, "@": 4}}


def test_attribute_names_that_look_like_markup_are_escaped():
    obj = Thing()
    obj.__dict__["@class"] = "not a class"
    assert state_of(obj) == {"@@class": "not a class"}


def test_dates_and_times_are_iso_strings():
    utc = datetime.timezone.utc
    plus2 = datetime.timezone(datetime.timedelta(hours=2), "CEST")
    doc = state_of(thing(
        naive=datetime.datetime(2024, 5, 1, 12, 30),
        micro=datetime.datetime(1999, 12, 31, 23, 59, 59, 5),
        aware=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=utc),
        plus2=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=plus2),
        day=datetime.date(2024, 2, 29),
        clock=datetime.time(8, 15, 1),
        clock_utc=datetime.time(8, 15, tzinfo=utc),
        delta=datetime.timedelta(days=1, seconds=2),
        fine=datetime.timedelta(microseconds=-1)))
    assert doc == {
        "naive": {"@datetime": "2024-05-01T12:30:00"},
        "micro": {"@datetime": "1999-12-31T23:59:59.000005"},
        "aware": {"@datetime": "2024-05-01T12:30:00+00:00"},
        "plus2": {"@datetime": "2024-05-01T12:30:00+02:00"},
        "day": {"@date": "2024-02-29"},
        "clock": {"@time": "08:15:01"},
        "clock_utc": {"@time": "08:15:00+00:00"},
        "delta": {"@timedelta": 86402},
        "fine": {"@timedelta": -1e-06}}


def test_fold_is_kept():
    # Pickle protocol 4 and later keep a datetime's fold (in its month byte).
    record = pickled(Thing, {"d": datetime.datetime(2024, 10, 27, 2, 30, fold=1),
                             "t": datetime.time(1, fold=1)}, 4)
    assert document(record)[1] == {"d": {"@datetime": "2024-10-27T02:30:00", "fold": 1},
                                   "t": {"@time": "01:00:00", "fold": 1}}


def test_a_datetime_with_another_tzinfo_keeps_it_beside():
    # A tzinfo that is not a fixed offset needs its class to compute: it is kept.
    record = (pickle.dumps(Thing, 3) + b"\x80\x03}(X\x01\x00\x00\x00w"
              b"cdatetime\ndatetime\nC\n\x07\xe8\x05\x01\x0c\x1e\x00\x00\x00\x00"
              b"czoneinfo\nZoneInfo\nX\x0c\x00\x00\x00Europe/Paris\x85R\x86Ru.")
    assert document(record)[1] == {"w": {
        "@datetime": "2024-05-01T12:30:00",
        "tz": {"@class": "zoneinfo.ZoneInfo", "args": ["Europe/Paris"]}}}


def test_decimals_are_strings():
    assert state_of(thing(d=decimal.Decimal("3.10"), n=decimal.Decimal("-Infinity"))) == {
        "d": {"@decimal": "3.10"}, "n": {"@decimal": "-Infinity"}}


def test_references_carry_the_oid_as_an_int_and_the_class():
    doc = state_of(thing(one=target(1), again=target(2**40 + 3), items=[target(7)]))
    assert doc == {"one": {"@ref": 1, "class": REF_CLASS},
                   "again": {"@ref": 2**40 + 3, "class": REF_CLASS},
                   "items": [{"@ref": 7, "class": REF_CLASS}]}


def test_weak_references():
    doc = state_of(thing(w=WeakRef(target(9))))
    assert doc == {"w": {"@wref": 9}}


def test_all_persistent_id_forms():
    head = pickle.dumps(Thing, 3)

    def ref(pid_pickle: bytes) -> object:
        body = b"\x80\x03}X\x01\x00\x00\x00r" + pid_pickle + b"Qs."
        return document(head + body)[1]["r"]

    oid = b"C\x08\x00\x00\x00\x00\x00\x00\x00\x05"
    assert ref(oid) == {"@ref": 5}
    assert ref(oid + b"cm\nK\n\x86") == {"@ref": 5, "class": "m.K"}
    assert ref(oid + b"X\x01\x00\x00\x00mX\x01\x00\x00\x00K\x86\x86") == {
        "@ref": 5, "class": "m.K"}
    assert ref(b"(X\x01\x00\x00\x00w" + oid + b"\x85l") == {"@wref": 5}
    assert ref(b"(" + oid + b"l") == {"@wref": 5}
    assert ref(b"(X\x01\x00\x00\x00nX\x02\x00\x00\x00db" + oid + b"\x86l") == {
        "@xref": 5, "database": "db"}
    assert ref(b"(X\x01\x00\x00\x00mX\x02\x00\x00\x00db" + oid + b"cm\nK\n\x87l") == {
        "@xref": 5, "database": "db", "class": "m.K"}
    assert ref(b"K\x05") == {"@unknown": "persistent id", "id": 5}


def test_instances_of_plain_classes_are_described():
    doc = state_of(thing(p=Point(1, 2), u=uuid.UUID(int=5), pair=Pair("a", 1),
                         od=OrderedDict([("k", 1)]), bag=Bag([1, 2]), kind=Point))
    name = f"{__name__}.Point"
    assert doc == {
        "p": {"@class": name, "state": {"x": 1, "y": 2}},
        "u": {"@class": "uuid.UUID", "state": {"int": 5}},
        "pair": {"@class": f"{__name__}.Pair", "args": ["a", 1]},
        "od": {"@class": "collections.OrderedDict", "items": {"k": 1}},
        "bag": {"@class": f"{__name__}.Bag", "items": [1, 2]},
        "kind": {"@global": name}}


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_instances_in_old_protocols(protocol):
    record = pickled(Thing, {"p": Point(1, "a")}, protocol)
    assert document(record)[1] == {"p": {"@class": f"{__name__}.Point",
                                         "state": {"x": 1, "y": "a"}}}


def test_slots_and_dict_are_merged():
    obj = Slotted()
    obj.size = 3
    obj.colour = "red"
    assert state_of(obj) == {"colour": "red", "size": 3}
    obj = Slotted()
    obj.size = 4
    assert state_of(obj) == {"size": 4}


def test_persistent_mapping_and_list_keep_their_data_attribute():
    mapping = PersistentMapping({"a": 1, "@b": 2})
    assert document(amphora_record(mapping)) == (
        "persistent.mapping.PersistentMapping", {"data": {"a": 1, "@@b": 2}})
    assert document(amphora_record(PersistentList([1, target(3)])))[1] == {
        "data": [1, {"@ref": 3, "class": REF_CLASS}]}


def test_buckets_and_small_trees_are_item_pairs():
    bucket = OOBucket({"a": target(1), "b": 2})
    assert document(amphora_record(bucket)) == ("BTrees.OOBTree.OOBucket", {
        "@items": [["a", {"@ref": 1, "class": REF_CLASS}], ["b", 2]]})
    assert document(amphora_record(OOBTree({"x": 1})))[1] == {"@items": [["x", 1]]}
    assert document(amphora_record(OOBTree()))[1] == {"@items": []}
    assert document(amphora_record(IOBTree({3: "c"})))[1] == {"@items": [[3, "c"]]}
    assert document(amphora_record(OOSet(["k", "j"])))[1] == {"@keys": ["j", "k"]}
    assert document(amphora_record(OOTreeSet(["k"])))[1] == {"@keys": ["k"]}
    assert document(amphora_record(OOTreeSet()))[1] == {"@keys": []}


def test_big_trees_and_linked_buckets_in_zodb_records():
    tree = OOBTree({f"k{i:04d}": i for i in range(200)})
    records = zodb_records(tree)
    doc = document(records[0])[1]
    assert set(doc) == {"@children", "keys", "first"}
    assert len(doc["@children"]) == len(doc["keys"]) + 1
    assert all(set(child) == {"@ref", "class"} for child in doc["@children"])
    assert doc["first"] == doc["@children"][0]
    assert doc["keys"] == sorted(doc["keys"])
    # Its buckets are records of their own, linked by "next".
    bucket = tree._firstbucket
    bucket_doc = document(zodb_records(OOBTree())[0])[1]
    assert bucket_doc == {"@items": []}
    assert bucket._next is not None


def test_a_bucket_with_a_next_bucket():
    record = (pickle.dumps(OOBucket, 3) + b"\x80\x03X\x01\x00\x00\x00aK\x01\x86"
              b"C\x08\x00\x00\x00\x00\x00\x00\x00\x09cBTrees.OOBTree\nOOBucket\n\x86Q\x86.")
    assert document(record)[1] == {
        "@items": [["a", 1]], "next": {"@ref": 9, "class": "BTrees.OOBTree.OOBucket"}}


def test_zodb_records_share_one_memo_between_the_pickles():
    # ZODB writes both pickles with one pickler: a reference to another object of the
    # same class refers back to the class pickle's memo.
    a, b = Thing(), Thing()
    a.other = b
    b.other = a
    b.when = datetime.date(2020, 1, 2)
    record_a, record_b = zodb_records(a, b)
    assert b"h\x00" in record_a  # BINGET 0: the class from the first pickle
    name_a, doc_a = document(record_a)
    assert name_a == "jsonpickle_support.Thing"
    assert doc_a == {"other": {"@ref": int.from_bytes(b._p_oid, "big"),
                               "class": "jsonpickle_support.Thing"}}
    assert document(record_b)[1]["when"] == {"@date": "2020-01-02"}


def test_zodb_and_amphora_records_give_the_same_documents():
    def make():
        return thing(title="t", tags={"a"}, when=datetime.datetime(2024, 1, 1),
                     blob=b"\x01", nested={"k": (1, 2.5)}, p=Point(1, [2]))
    assert state_of(make()) == document(zodb_records(make())[0])[1]


def test_classes_with_getnewargs_read_their_metadata():
    class_name, doc = document(amphora_record(WithArgs()))
    assert class_name == f"{__name__}.WithArgs"
    assert doc == {"x": 1}


class WithArgs(Thing):
    def __init__(self):
        self.x = 1

    def __getnewargs__(self):
        return ("arg",)


class TestPython2Records:
    """Records ZODB 3 wrote under Python 2: protocol 1 or 2, ``str`` as STRING opcodes."""

    CLASS = b"cmyapp.models\nPage\nq\x01."

    def test_ascii_strings_are_text_and_others_bytes(self):
        state = (b"\x80\x02}q\x02(U\x05titleq\x03U\x05HelloU\x04bodyU\x02\xe9tq\x04"
                 b"U\x03oidq\x05T\x03\x00\x00\x00abcu.")
        assert document(b"\x80\x02" + self.CLASS + state) == (
            "myapp.models.Page", {"title": "Hello", "body": {"@bytes": "6XQ="},
                                  "oid": "abc"})

    def test_protocol_1_text_opcodes(self):
        state = (b"}q\x02(S'name'\nq\x03S'caf\\xe9'\nq\x04S'n'\nI42\nS'big'\n"
                 b"L12345678901234567890123L\nS'f'\nF1.5\nS't'\nI01\nS'u'\nVx\\u20acy\nu.")
        assert document(self.CLASS + state)[1] == {
            "name": {"@bytes": "Y2Fm6Q=="},
            "n": 42, "big": {"@int": "12345678901234567890123"}, "f": 1.5, "t": True,
            "u": "x€y"}

    def test_references_with_python_2_oids(self):
        state = (b"\x80\x02}q\x02U\x03refq\x03(U\x08\x00\x00\x00\x00\x00\x00\x00\x07q\x04"
                 b"cmyapp.models\nPage\nq\x05tQs.")
        assert document(b"\x80\x02" + self.CLASS + state)[1] == {
            "ref": {"@ref": 7, "class": "myapp.models.Page"}}
        high = b"\x80\x02}U\x01rU\x08\x00\x00\x00\x00\x00\x00\x00\x80Qs."
        assert document(b"\x80\x02" + self.CLASS + high)[1] == {"r": {"@ref": 128}}

    def test_datetimes_with_python_2_strings(self):
        # A Python 2 datetime pickles its state as a str of 10 bytes.
        ascii_state = b"\x07\xe8\x05\x01\x0c\x1e\x00\x00\x00\x00"
        state = (b"\x80\x02}U\x01dcdatetime\ndatetime\nU\n" + ascii_state + b"\x85Rs.")
        assert document(b"\x80\x02" + self.CLASS + state)[1] == {
            "d": {"@datetime": "2024-05-01T12:30:00"}}
        high = b"\x07\xe8\x05\x01\x0c\x1e\x00\x00\x00\xff"
        state = b"\x80\x02}U\x01dcdatetime\ndatetime\nU\n" + high + b"\x85Rs."
        assert document(b"\x80\x02" + self.CLASS + state)[1] == {
            "d": {"@datetime": "2024-05-01T12:30:00.000255"}}

    def test_old_class_metadata_forms(self):
        for meta in (b"\x80\x02cmyapp.models\nPage\nN\x86.",
                     b"\x80\x02U\x0cmyapp.modelsU\x04Page\x86N\x86.",
                     b"\x80\x02cmyapp.models\nPage\n)\x86."):
            assert document(meta + b"\x80\x02}.") == ("myapp.models.Page", {})


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_gives_the_same_document(protocol):
    state = {"s": "x", "b": b"\x00\xff", "e": b"", "t": (1, (2,)), "set": {1},
             "fs": frozenset(), "d": {1: 2}, "f": float("inf"), "big": 2**80,
             "when": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
             "dec": decimal.Decimal("1.1"), "l": [None, True, -3, 0.5]}
    expected = document(pickled(Thing, state, 3))
    assert document(pickled(Thing, state, protocol)) == expected


def test_json_to_value_inverts_plain_data_and_leaves_markup():
    value = {"t": (1, b"x"), "s": {"a"}, "d": {2: [3]}, "f": float("-inf"),
             "i": 2**70, "w": datetime.datetime(2024, 1, 1, 1, tzinfo=datetime.timezone.utc),
             "day": datetime.date(2024, 1, 1), "c": datetime.time(1, 2),
             "dt": datetime.timedelta(seconds=90), "dec": decimal.Decimal("2.50")}
    doc = state_of(thing(**value))
    assert json_to_value(json.loads(json.dumps(doc))) == value
    decoded = json_to_value(state_of(thing(r=target(3), p=Point(1, 2))))
    assert isinstance(decoded["r"], Markup) and decoded["r"] == {"@ref": 3, "class": REF_CLASS}
    assert decoded["p"] == Markup({"@class": f"{__name__}.Point", "state": {"x": 1, "y": 2}})
