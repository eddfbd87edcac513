"""Oids, tids and their representations.

Oids and tids are 8-byte big-endian strings. A tid is the raw form of a
:class:`persistent.timestamp.TimeStamp` (UTC, about 14 ns resolution), so tids sort by
commit time and convert to and from dates.
"""
from __future__ import annotations

import datetime
import struct
import time

from persistent.timestamp import TimeStamp

__all__ = ["p64", "u64", "z64", "maxtid", "new_tid", "tid_repr", "oid_repr",
           "tid_to_datetime", "tid_from_datetime", "tid_time"]

_packer = struct.Struct(">Q")
z64 = b"\0" * 8
maxtid = b"\x7f\xff\xff\xff\xff\xff\xff\xff"


def p64(n: int) -> bytes:
    """The 8-byte big-endian form of a non-negative integer."""
    return _packer.pack(n)


def u64(b: bytes) -> int:
    """The integer of an 8-byte big-endian string."""
    return _packer.unpack(b)[0]


def new_tid(previous: bytes | None) -> bytes:
    """A tid for now that is strictly greater than ``previous``."""
    now = time.time()
    stamp = TimeStamp(*(time.gmtime(now)[:5] + (now % 60,)))
    if previous is not None:
        stamp = stamp.laterThan(TimeStamp(previous))
    return stamp.raw()


def tid_time(tid: bytes) -> float:
    """Seconds since the epoch at which ``tid`` was committed."""
    return TimeStamp(tid).timeTime()


def tid_to_datetime(tid: bytes) -> datetime.datetime:
    """The UTC datetime of ``tid``."""
    return datetime.datetime.fromtimestamp(tid_time(tid), datetime.timezone.utc)


def tid_from_datetime(when: datetime.datetime) -> bytes:
    """The smallest tid at or after ``when`` (naive datetimes are taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    seconds = when.second + when.microsecond / 1e6
    return TimeStamp(when.year, when.month, when.day, when.hour, when.minute, seconds).raw()


def tid_repr(tid: bytes | None) -> str:
    """``0x03ea...`` plus the time, for messages."""
    if not isinstance(tid, bytes) or len(tid) != 8:
        return repr(tid)
    if tid == z64:
        return "0x00"
    return f"0x{tid.hex()} ({TimeStamp(tid)})"


def oid_repr(oid: bytes | None) -> str:
    """``0x1f``-style short hex of an oid, for messages."""
    if not isinstance(oid, bytes) or len(oid) != 8:
        return repr(oid)
    return hex(u64(oid))
