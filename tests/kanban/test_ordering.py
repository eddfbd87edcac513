"""Fractional-index keys: always a key between two neighbours, and short."""
import random

import pytest

from amphora_kanban.ordering import is_key, key_between, keys_between


def test_a_key_sorts_strictly_between_its_neighbours():
    assert None is not key_between(None, None)
    for a, b in [(None, "V"), ("V", None), ("V", "W"), ("V", "V1"), ("a", "az"),
                 ("A", "A01"), ("zzz", None), (None, "01")]:
        k = key_between(a, b)
        assert is_key(k)
        assert (a is None or a < k) and (b is None or k < b), (a, k, b)


def test_many_inserts_between_the_same_neighbours_keep_order_and_stay_short():
    # Always inserting right after the lower neighbour (the worst case for growth).
    low, high = "A", "B"
    keys = []
    for _ in range(500):
        high = key_between(low, high)
        keys.append(high)
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == 500
    # Each further digit holds about five halvings of the gap: the key grows by one
    # digit per five inserts at the same place, never faster.
    assert max(map(len, keys)) <= 500 // 5 + 2


def test_appending_and_prepending_grow_keys_slowly():
    end = keys_between("V", None, 600)
    assert end == sorted(end) and len(set(end)) == 600
    assert max(map(len, end)) <= 600 // 30
    start = [key_between(None, "V")]
    for _ in range(300):
        start.append(key_between(None, start[-1]))
    assert start == sorted(start, reverse=True) and max(map(len, start)) <= 300 // 30


def test_random_inserts_keep_a_total_order():
    rng = random.Random(7)
    column: list[str] = []
    for _ in range(1000):
        i = rng.randint(0, len(column))
        k = key_between(column[i - 1] if i else None, column[i] if i < len(column) else None)
        column.insert(i, k)
    assert column == sorted(column) and len(set(column)) == len(column)


@pytest.mark.parametrize("a, b", [("B", "A"), ("A", "A"), ("A0", None), ("", None),
                                  ("A!", None)])
def test_malformed_or_reversed_bounds_are_refused(a, b):
    with pytest.raises(ValueError):
        key_between(a, b)
