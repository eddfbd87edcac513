"""The buckets sealed plaintexts are padded to, so that a storage sees bucket sizes only:
records (:mod:`amphora.storage.encrypted`) and blob files
(:mod:`amphora.crypto.sealed_blobs`) alike. A plaintext is followed by a byte 0x80, the
mark, then zeros up to its bucket."""
from __future__ import annotations

__all__ = ["MARK", "PAD_STEP", "padded_size"]

MARK = b"\x80"
PAD_STEP = 64  # the buckets' smallest step (below 1 KiB every bucket is a multiple of it)


def padded_size(size: int) -> int:
    """The bucket of a plaintext of ``size`` bytes: the size it is padded to (the pad mark
    included). Multiples of 64 bytes up to 1 KiB, then 8 buckets per doubling, each step
    1/8 of the power of two below: 1152, 1280, ... 2048, 2304, ... (at most 12.5% more)."""
    size += 1  # the mark
    step = PAD_STEP if size <= 1024 else 1 << ((size - 1).bit_length() - 4)
    return -(-size // step) * step
