"""Frames of the wire protocol: a message ending with a large byte string (a blob
chunk's request or reply) is made around the bytes, and must be exactly the MessagePack
the packer makes of it; every frame decodes back to its message, whole or fed in
pieces."""
from __future__ import annotations

import os

import msgpack
import pytest

from amphora.server import protocol as p


@pytest.mark.parametrize("size", [0, 5, 65535, 65536, 70000, 1 << 20, (1 << 20) + 3])
def test_a_chunk_frame_is_the_packers_messagepack_and_decodes_back(size):
    data = os.urandom(size)
    for message in ([p.REQUEST, 7, p.BLOB_WRITE, [3, 12345678901, data]],
                    [p.REPLY, 2 ** 40, [size, data]], [p.REPLY, 1, [data]]):
        frame = p.encode(message)
        body = msgpack.packb(message, use_bin_type=True)
        assert frame == p.HEADER.pack(len(body)) + body
        decoder = p.FrameDecoder()
        pieces = [frame[i:i + 4096] for i in range(0, len(frame), 4096)]
        decoded = [found for piece in pieces for found in decoder.feed(piece)]
        assert decoded == [message]
