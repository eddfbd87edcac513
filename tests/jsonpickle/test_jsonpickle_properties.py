"""Properties of the transcoder over generated nested data: the text is strict JSON, it
follows the documented mapping (checked against a conversion written here, from the
Python value), it is the same for every pickle protocol, plain data comes back through
``json_to_value``, and keys that look like markup never come out as markup."""
from __future__ import annotations

import base64
import datetime
import decimal
import json
import math

from hypothesis import given, settings, strategies as st
from persistent import Persistent

from amphora.errors import CorruptRecordError
from amphora.jsonpickle import Markup, json_to_value, record_to_json, transcode
from jsonpickle_support import (Target, Thing, amphora_record, damaged, pickled, target,
                                thing)

PLAIN_TAGS = {"@tuple", "@set", "@frozenset", "@dict", "@bytes", "@str", "@float", "@int",
              "@decimal", "@datetime", "@date", "@time", "@timedelta"}

offsets = st.timedeltas(min_value=datetime.timedelta(hours=-23),
                        max_value=datetime.timedelta(hours=23)).map(
    lambda delta: datetime.timezone(datetime.timedelta(minutes=delta // datetime.timedelta(minutes=1))))
zones = st.none() | st.just(datetime.timezone.utc) | offsets
odd_text = st.lists(st.sampled_from(["a", "\x00", "\ud800", "\udfff", "é", "@", "\n", "\\"]),
                    max_size=5).map("".join)
texts = st.text(max_size=8) | odd_text
keys = texts | st.sampled_from(["@ref", "@class", "@tuple", "@dict", "@@x", "@", "@unknown"])
hashables = (st.none() | st.booleans() | st.integers() | st.text(max_size=4)
             | st.binary(max_size=4) | st.tuples(st.integers(), st.text(max_size=3)))
scalars = (st.none() | st.booleans()
           | st.integers(min_value=-2**80, max_value=2**80)
           | st.floats() | texts | st.binary(max_size=12)
           | st.datetimes(timezones=zones).map(lambda value: value.replace(fold=0))
           | st.dates()
           | st.times(timezones=zones).map(lambda value: value.replace(fold=0))
           | st.timedeltas(min_value=datetime.timedelta(days=-20000),
                           max_value=datetime.timedelta(days=20000))
           | st.decimals(allow_nan=False))


def nested(leaves):
    return st.recursive(leaves, lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(hashables, children, max_size=3)
        | st.sets(hashables, max_size=3)
        | st.frozensets(hashables, max_size=3)), max_leaves=12)


plain = nested(scalars)
with_refs = nested(scalars | st.integers(min_value=0, max_value=2**63 - 1).map(target))


def storable(text: str) -> bool:
    return "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def expected(value):
    """The documented JSON of ``value``, written from the table in docs/search.md."""
    kind = type(value)
    if isinstance(value, Persistent):
        return {"@ref": int.from_bytes(value._p_oid, "big"),
                "class": f"{Target.__module__}.{Target.__qualname__}"}
    if value is None or kind is bool:
        return value
    if kind is int:
        return value if -2**63 <= value < 2**63 else {"@int": str(value)}
    if kind is float:
        if math.isnan(value):
            return {"@float": "nan"}
        if math.isinf(value):
            return {"@float": "inf" if value > 0 else "-inf"}
        return value
    if kind is str:
        if storable(value):
            return value
        return {"@str": base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()}
    if kind is bytes:
        return {"@bytes": base64.b64encode(value).decode()}
    if kind is list:
        return [expected(item) for item in value]
    if kind is tuple:
        return {"@tuple": [expected(item) for item in value]}
    if kind is set:
        return {"@set": [expected(item) for item in value]}
    if kind is frozenset:
        return {"@frozenset": [expected(item) for item in value]}
    if kind is dict:
        if all(type(key) is str and storable(key) for key in value):
            return {("@" + key if key.startswith("@") else key): expected(item)
                    for key, item in value.items()}
        return {"@dict": [[expected(key), expected(item)] for key, item in value.items()]}
    if kind is datetime.datetime:
        return {"@datetime": value.isoformat()}
    if kind is datetime.date:
        return {"@date": value.isoformat()}
    if kind is datetime.time:
        return {"@time": value.isoformat()}
    if kind is datetime.timedelta:
        micros = (value.days * 86400 + value.seconds) * 10**6 + value.microseconds
        return {"@timedelta": micros // 10**6 if not value.microseconds else micros / 1e6}
    if kind is decimal.Decimal:
        return {"@decimal": str(value)}
    raise AssertionError(f"no expectation for {kind}")


def strict(text: str):
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")
    parsed = json.loads(text, parse_constant=refuse)
    json.dumps(parsed, allow_nan=False)
    text.encode("utf-8")  # no lone surrogates
    assert "\\u0000" not in text
    return parsed


def same(a, b) -> bool:
    """Equal, with NaN equal to itself and types compared exactly."""
    if type(a) is not type(b):
        return False
    if type(a) is float and math.isnan(a):
        return math.isnan(b)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    return a == b


def markup_tags(doc) -> set[str]:
    found = set()
    if isinstance(doc, list):
        for item in doc:
            found |= markup_tags(item)
    elif isinstance(doc, dict):
        tags = [key for key in doc if key.startswith("@") and not key.startswith("@@")]
        assert len(tags) <= 1, doc
        found.update(tags)
        for item in doc.values():
            found |= markup_tags(item)
    return found


@settings(max_examples=150, deadline=None)
@given(with_refs)
def test_records_follow_the_mapping(value):
    class_name, text = transcode(amphora_record(thing(value=value)))
    assert class_name == f"{Thing.__module__}.Thing"
    assert strict(text) == {"value": expected(value)}


@settings(max_examples=100, deadline=None)
@given(plain, st.sampled_from(range(6)))
def test_every_protocol_follows_the_mapping(value, protocol):
    text = transcode(pickled(Thing, {"value": value}, protocol))[1]
    assert strict(text) == {"value": expected(value)}


@settings(max_examples=150, deadline=None)
@given(plain)
def test_plain_data_comes_back(value):
    doc = strict(transcode(amphora_record(thing(value=value)))[1])
    assert markup_tags(doc) <= PLAIN_TAGS
    assert same(json_to_value(doc), {"value": value})


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, st.integers(-2**63, 2**63 - 1) | texts, min_size=1, max_size=6))
def test_keys_that_look_like_markup_never_come_out_as_markup(mapping):
    doc = strict(transcode(amphora_record(thing(value=mapping)))[1])
    # Only the forms of strings SQL cannot store (as values, or as keys of a "@dict").
    assert markup_tags(doc) <= {"@str", "@dict"}
    decoded = json_to_value(doc)["value"]
    assert not isinstance(decoded, Markup)
    assert same(decoded, mapping)


@settings(max_examples=200, deadline=None)
@given(with_refs, st.data())
def test_damaged_records_still_get_a_document(value, data):
    record = damaged(amphora_record(thing(value=value)), data)
    try:
        transcode(record)
    except Exception as exc:
        assert isinstance(exc, CorruptRecordError), repr(exc)
    class_name, text = record_to_json(record)
    assert isinstance(class_name, str)
    strict(text)
