"""The transcoder never imports or calls a class, and gives every record a document:
odd parts become placeholders, broken records a placeholder document."""
from __future__ import annotations

import builtins
import json
import pickle
import sys

import pytest

from amphora.errors import CorruptRecordError
from amphora.jsonpickle import record_to_json, transcode
from jsonpickle_support import Thing, amphora_record, document, thing


def record_naming(module: str, name: str) -> bytes:
    """A ZODB-style record of class ``module.name`` whose state holds an instance of,
    and a reference to, other classes of the same unimportable module."""
    return (b"\x80\x03c" + f"{module}\n{name}\n".encode() + b"q\x00.\x80\x03}q\x01("
            b"X\x06\x00\x00\x00widgetc" + f"{module}\nWidget\n".encode() +
            b")\x81}X\x04\x00\x00\x00sizeK\x03sbX\x03\x00\x00\x00refC\x08\x00\x00\x00"
            b"\x00\x00\x00\x00\x02c" + f"{module}\nPart\n".encode() + b"\x86QX\x01\x00"
            b"\x00\x00fc" + f"{module}\nmake\n".encode() + b"K\x01\x85Ru.")


def test_a_record_whose_module_does_not_exist():
    modules = set(sys.modules)
    class_name, text = transcode(record_naming("no_such_package.models", "Gadget"))
    assert class_name == "no_such_package.models.Gadget"
    assert json.loads(text) == {
        "widget": {"@class": "no_such_package.models.Widget", "state": {"size": 3}},
        "ref": {"@ref": 2, "class": "no_such_package.models.Part"},
        "f": {"@class": "no_such_package.models.make", "args": [1]}}
    assert set(sys.modules) == modules


def test_a_module_with_side_effects_is_not_imported(tmp_path, monkeypatch):
    (tmp_path / "explosive_models.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(tmp_path / 'imported')!r}).write_text('yes')\n"
        "raise RuntimeError('imported')\n"
        "class Gadget: pass\nclass Widget: pass\nclass Part: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set(sys.modules)
    class_name, text = record_to_json(record_naming("explosive_models", "Gadget"))
    assert class_name == "explosive_models.Gadget"
    assert json.loads(text)["widget"]["@class"] == "explosive_models.Widget"
    assert not (tmp_path / "imported").exists()
    assert set(sys.modules) == modules


def test_nothing_is_imported_or_called_while_transcoding(monkeypatch):
    record = amphora_record(thing(p=Point(1, 2), kind=Point))
    calls = []
    monkeypatch.setattr(Point, "__setstate__", lambda self, state: calls.append(state),
                        raising=False)
    monkeypatch.setattr(Point, "__new__", lambda cls, *a: calls.append(a), raising=False)
    real_import = builtins.__import__

    def spy(name, *args, **kwargs):
        calls.append(name)
        return real_import(name, *args, **kwargs)

    builtins.__import__ = spy
    try:
        text = transcode(record)[1]
    finally:
        builtins.__import__ = real_import
    assert calls == []
    assert json.loads(text)["p"]["state"] == {"x": 1, "y": 2}


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_a_structure_that_contains_itself_becomes_a_placeholder_where_it_recurs():
    loop = [1]
    loop.append(loop)
    mapping = {"k": 1}
    mapping["self"] = mapping
    doc = document(amphora_record(thing(loop=loop, mapping=mapping)))[1]
    assert doc == {"loop": [1, {"@unknown": "cycle"}],
                   "mapping": {"k": 1, "self": {"@unknown": "cycle"}}}


def test_shared_structures_are_written_at_each_place():
    shared = [1, 2]
    assert document(amphora_record(thing(a=shared, b={"x": shared})))[1] == {
        "a": [1, 2], "b": {"x": [1, 2]}}


def test_sharing_nested_in_sharing_cannot_blow_up_the_document():
    doubling = []
    for _ in range(40):
        doubling = [doubling, doubling]  # 2**40 lists once written out
    modest = [[1, 2]] * 10
    doc = document(amphora_record(thing(doubling=doubling)))[1]
    assert doc == {"@unknown": "too large"}
    assert document(amphora_record(thing(modest=[modest, modest])))[1] == {
        "modest": [[[1, 2]] * 10] * 2}


def test_deep_nesting_is_cut_with_a_placeholder():
    # 5000 lists, each inside the one before (more than pickle itself can write).
    nested = b"]" * 5000 + b"a" * 4999
    text = transcode(pickle.dumps(Thing, 3) + b"\x80\x03}X\x04\x00\x00\x00deep" + nested
                     + b"s.")[1]
    assert '{"@unknown":"too deep"}' in text
    depth, value = 0, json.loads(text)["deep"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert value == {"@unknown": "too deep"} and depth < 300


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"garbage", "not a pickle"),
    (pickle.dumps(Thing, 3), "one pickle only"),
    (amphora_record(thing(a="x" * 50))[:-10], "truncated"),
    (pickle.dumps(Thing, 3) + b"\x80\x03\xff.", "an opcode that does not exist"),
    (pickle.dumps(Thing, 3) + b"\x80\x03h\x09.", "a memo entry never stored"),
    (pickle.dumps(Thing, 3) + b"\x80\x03K\x01K\x02.", "two values left on the stack"),
    (b"\x80\x03K\x01.\x80\x03}.", "class metadata that is not a class"),
])
def test_broken_records_raise_a_clear_error_and_still_get_a_document(data, reason):
    with pytest.raises(CorruptRecordError):
        transcode(data)
    class_name, text = record_to_json(data)
    doc = json.loads(text)
    assert doc["@unknown"] == "corrupt record"
    assert isinstance(doc["error"], str) and doc["error"]
    assert class_name in ("", "jsonpickle_support.Thing")


def test_a_truncated_record_keeps_its_class_name():
    assert record_to_json(amphora_record(thing(a="x" * 50))[:-10])[0] == (
        "jsonpickle_support.Thing")


@pytest.mark.parametrize("state, expected", [
    (b"\x82\x05", {"@unknown": "EXT", "code": 5}),
    (b"Pabc\n", {"@unknown": "PERSID", "id": "abc"}),
    (b"K\x01K\x02R", {"@unknown": "REDUCE", "callable": 1, "args": 2}),
    (b"K\x01}b", {"@unknown": "BUILD", "object": 1, "state": {}}),
    (b"K\x01X\x01\x00\x00\x00n\x93", {"@unknown": "STACK_GLOBAL", "module": 1, "name": "n"}),
    (b"cm\nf\nK\x01\x81", {"@unknown": "NEWOBJ", "class": {"@global": "m.f"}, "args": 1,
                             "kwargs": None}),
])
def test_odd_pickle_parts_become_placeholders(state, expected):
    data = pickle.dumps(Thing, 3) + b"\x80\x03}X\x01\x00\x00\x00v" + state + b"s."
    assert document(data)[1] == {"v": expected}


def test_the_error_says_what_is_wrong():
    with pytest.raises(CorruptRecordError, match="unknown pickle opcode 0xff"):
        transcode(pickle.dumps(Thing, 3) + b"\x80\x03\xff.")
