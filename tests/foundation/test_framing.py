from __future__ import annotations

import struct

import pytest

from services.foundation.rpc.framing import FrameDecoder, FrameTooLarge, encode_frame


def test_frames_split_across_reads_are_reassembled() -> None:
    stream = encode_frame(b"first") + encode_frame(b"") + encode_frame(b"third" * 100)
    decoder = FrameDecoder(max_frame_bytes=1024)
    frames: list[bytes] = []
    for offset in range(0, len(stream), 3):
        frames.extend(decoder.feed(stream[offset : offset + 3]))
    assert frames == [b"first", b"", b"third" * 100]
    assert not decoder.has_partial_frame


def test_partial_frame_is_reported() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    assert decoder.feed(encode_frame(b"abcdef")[:5]) == []
    assert decoder.has_partial_frame


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge) as refused:
        decoder.feed(struct.pack(">I", 11))
    assert refused.value.size == 11 and refused.value.limit == 10


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=10)
    assert decoder.feed(encode_frame(b"x" * 10)) == [b"x" * 10]


def test_a_frame_put_back_is_handed_out_again_before_the_next() -> None:
    decoder = FrameDecoder(1024)
    decoder.append(encode_frame(b"one") + encode_frame(b"two") + encode_frame(b"thr"))
    assert decoder.next_frame() == b"one"
    assert decoder.next_frame() == b"two"
    decoder.put_back()
    assert decoder.buffered_bytes == 2 * len(encode_frame(b"two"))
    assert decoder.next_frame() == b"two"
    assert decoder.next_frame() == b"thr"
    assert decoder.next_frame() is None
