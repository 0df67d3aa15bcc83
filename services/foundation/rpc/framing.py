"""Length-prefixed frames: a 4-byte big-endian body length, then the body.

The one codec of the wire protocol, used by the auth server and by the HTTP tier's client.
A frame's size is checked as soon as its header arrives, before any of the body is buffered.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024


class FramingError(Exception):
    """The byte stream is not a valid sequence of frames; the connection must close."""


class FrameTooLarge(FramingError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def encode_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies; feed it whatever the socket delivers."""

    __slots__ = ("_buffer", "_max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes

    @property
    def has_partial_frame(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data` and return every complete frame body, oldest first."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset = 0
        available = len(buffer)
        while available - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, offset)
            if size > self._max_frame_bytes:
                raise FrameTooLarge(size, self._max_frame_bytes)
            end = offset + HEADER.size + size
            if end > available:
                break
            frames.append(bytes(buffer[offset + HEADER.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return frames
