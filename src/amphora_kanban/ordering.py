"""Fractional-index keys: strings that sort between any two neighbours.

Cards are ordered within a column by a key string. Moving a card gives it a new key
between its new neighbours' keys and writes that card only, never its siblings. A key
is a string of base-62 digits read as a fraction (``"V"`` is about one half); between
any two distinct keys there is always another, one digit longer at worst, so inserting
again and again at the same place never runs out of precision the way floats do.

Contract of :func:`key_between`: for keys ``a < b`` (``None`` meaning "no neighbour"
on that side), the result ``k`` satisfies ``a < k < b``, never ends in the digit
``"0"`` (so a key is never a prefix-padded equal of another), and is at most one digit
longer than the longer of ``a`` and ``b`` (appending after the last key or before the
first one bumps a digit rather than halving, so keys grow slowly there too).
"""
from __future__ import annotations

__all__ = ["DIGITS", "key_between", "keys_between", "is_key"]

DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE = len(DIGITS)
_VALUE = {d: i for i, d in enumerate(DIGITS)}


def is_key(key: object) -> bool:
    """Whether ``key`` is a well-formed key (non-empty, base-62 digits, not ending in 0)."""
    return (isinstance(key, str) and key != "" and key[-1] != "0"
            and all(c in _VALUE for c in key))


def key_between(a: str | None, b: str | None) -> str:
    """A key strictly between ``a`` and ``b`` (``None``: unbounded on that side).

    Raises ValueError when ``a >= b`` or a key is malformed.
    """
    for key in (a, b):
        if key is not None and not is_key(key):
            raise ValueError(f"malformed ordering key {key!r}")
    if a is not None and b is not None and a >= b:
        raise ValueError(f"ordering keys out of order: {a!r} >= {b!r}")
    if b is None and a is not None:
        # Appending (the common case): bump the first digit that can grow, so a key
        # gains a digit only once per ~60 appends, not once per ~6 halvings.
        for i, d in enumerate(a):
            if d != DIGITS[-1]:
                return a[:i] + DIGITS[_VALUE[d] + 1]
    if a is None and b is not None:
        # Prepending, likewise: lower the first digit that can shrink (not to "0").
        for i, d in enumerate(b):
            if _VALUE[d] > 1:
                return b[:i] + DIGITS[_VALUE[d] - 1]
    lower = a or ""
    digits = []
    i = 0
    # Walk the digits of both bounds (a missing lower digit is 0, a missing upper
    # digit is the base, i.e. "no bound yet") until there is room for a digit between.
    while True:
        lo = _VALUE[lower[i]] if i < len(lower) else 0
        hi = _VALUE[b[i]] if b is not None and i < len(b) else _BASE
        if hi - lo > 1:
            digits.append(DIGITS[(lo + hi) // 2])
            return "".join(digits)
        digits.append(DIGITS[lo])
        if hi > lo:
            # The upper bound is passed: from here on only the lower bound constrains.
            b = None
        i += 1


def keys_between(a: str | None, b: str | None, count: int) -> list[str]:
    """``count`` ascending keys strictly between ``a`` and ``b``."""
    keys: list[str] = []
    for _ in range(count):
        a = key_between(a, b)
        keys.append(a)
    return keys
