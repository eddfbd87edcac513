"""ObjectReader's shortcut for the usual record (amphora's class pickle, then a state
without references) must read exactly what the general way reads, and step aside for
every other record: states with references, ZODB records whose state refers back to the
class pickle's memo, Python 2 strings, classes with ``__getnewargs__``."""
from __future__ import annotations

import io
import pickle

import pytest
import zodbpickle.pickle as zpickle
from persistent import Persistent

from amphora import serialize
from amphora.errors import CorruptRecordError
from amphora.serialize import PROTOCOL, Broken, ObjectReader, ObjectWriter


class Plain(Persistent):
    pass


class Holder(Persistent):
    pass


class WithNewArgs(Persistent):
    def __getnewargs__(self):
        return ("fixed",)

    def __new__(cls, *args):
        return super().__new__(cls)


class Jar:
    """Enough of a connection for ObjectWriter and ObjectReader."""

    def __init__(self):
        self.objects = {}
        self.next = 0

    def new_oid(self) -> bytes:
        self.next += 1
        return self.next.to_bytes(8, "big")

    def ghost(self, oid, klass):
        return self.objects.setdefault(oid, klass.__new__(klass))

    def get(self, oid):
        return self.objects[oid]


@pytest.fixture
def jar():
    return Jar()


@pytest.fixture(autouse=True)
def fresh_shortcut_table():
    saved = dict(serialize._class_pickles)
    serialize._class_pickles.clear()
    yield
    serialize._class_pickles.clear()
    serialize._class_pickles.update(saved)


def read(jar, klass, data):
    obj = klass.__new__(klass)
    ObjectReader(jar.ghost, jar.get).set_state(obj, data)
    return obj


def general_state(jar, data):
    return ObjectReader(jar.ghost, jar.get).get_state(data)


def test_a_plain_state_takes_the_shortcut_and_reads_the_same(jar):
    obj = Plain()
    obj.__dict__.update(name="ann", count=3, blob=b"\x00\xff" * 100, ratio=0.5, flag=None)
    data = ObjectWriter(jar, jar.new_oid, lambda o: None).serialize(obj)
    copy = read(jar, Plain, data)
    assert copy.__dict__ == obj.__dict__ == general_state(jar, data)
    assert serialize._class_pickles[Plain] == pickle.dumps(Plain, PROTOCOL)  # shortcut kept


def test_a_state_with_references_is_read_the_general_way_from_then_on(jar):
    holder, target = Holder(), Plain()
    holder.target, holder.items = target, [1, 2]
    data = ObjectWriter(jar, jar.new_oid, lambda o: None).serialize(holder)
    copy = read(jar, Holder, data)
    assert copy.items == [1, 2]
    assert copy.target is jar.objects[target._p_oid] and type(copy.target) is Plain
    assert serialize._class_pickles[Holder] is None
    again = read(jar, Holder, data)
    assert again.target is copy.target


def test_a_zodb_record_whose_state_refers_to_the_class_pickle_memo(jar):
    # ZODB writes both pickles with one pickler and one memo: a state that holds the class
    # itself refers back to the first pickle's memo entry (BINGET 0), which a state read
    # on its own cannot resolve.
    out = io.BytesIO()
    pickler = zpickle.Pickler(out, 3)
    pickler.dump(Plain)
    pickler.dump({"kind": Plain, "name": "x"})
    data = out.getvalue()
    assert data.startswith(pickle.dumps(Plain, PROTOCOL))
    assert b"h\x00" in data[len(pickle.dumps(Plain, PROTOCOL)):]  # BINGET 0
    assert read(jar, Plain, data).__dict__ == {"kind": Plain, "name": "x"}


def test_python2_strings_that_are_not_ascii_stay_bytes(jar):
    # SHORT_BINSTRING (a Python 2 str) holding non-ASCII bytes: ZODB reads it as bytes
    state = b"\x80\x03}q\x00(X\x04\x00\x00\x00nameq\x01U\x03\xe9t\xe9q\x02u."
    data = pickle.dumps(Plain, PROTOCOL) + state
    assert read(jar, Plain, data).__dict__ == {"name": b"\xe9t\xe9"}
    ascii_state = b"\x80\x03}q\x00(X\x04\x00\x00\x00nameq\x01U\x03annq\x02u."
    assert read(jar, Plain, pickle.dumps(Plain, PROTOCOL) + ascii_state).name == "ann"


def test_a_class_with_newargs_is_read_the_general_way(jar):
    obj = WithNewArgs()
    obj.value = 7
    data = ObjectWriter(jar, jar.new_oid, lambda o: None).serialize(obj)
    assert read(jar, WithNewArgs, data).value == 7
    assert serialize._class_pickles[WithNewArgs] is None


def test_a_damaged_state_raises_the_general_error(jar):
    data = pickle.dumps(Plain, PROTOCOL) + b"\x80\x03}q\x00(X\x04\x00\x00"
    with pytest.raises(CorruptRecordError):
        read(jar, Plain, data)


def test_a_state_naming_a_missing_class_holds_a_broken_object_of_that_name(jar):
    state = b"\x80\x03}q\x00X\x01\x00\x00\x00xcno_such_module\nThing\nq\x01)\x81q\x02s."
    obj = read(jar, Plain, pickle.dumps(Plain, PROTOCOL) + state)
    inner = obj.x
    assert isinstance(inner, Broken)
    assert (type(inner).__module__, type(inner).__name__) == ("no_such_module", "Thing")
