"""Length-prefixed frames: a 4-byte big-endian body length, then the body.

The one codec of the wire protocol, used by the auth server and by the HTTP tier's client.
A frame's size is checked as soon as its header arrives, before any of the body is buffered.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024
# The lowest GATEHOUSE_MAX_FRAME_BYTES either tier accepts. The largest frames the protocol
# carries must fit: an account export (its sessions capped at 256 KiB) and a stored picture
# (a 256x256 WebP, about 116 KiB for noise). Over the limit, a picture could be neither stored
# nor served, and a reply over the caller's limit fails its whole connection.
SMALLEST_MAX_FRAME_BYTES = 512 * 1024
# The most a Hello may take: a connection's first frame, sent before its peer has negotiated
# anything. A Hello holds two numbers and two short strings (a few dozen bytes); with the call
# frames' limit instead, each connection of a peer could hold a megabyte before saying hello.
MAX_HELLO_FRAME_BYTES = 4096


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
    """Splits a byte stream into frame bodies; feed it whatever the socket delivers.

    `feed` returns every complete frame at once (the client). The server takes them one at a
    time with `append` and `next_frame`, so it can stop between two frames (a connection at its
    cap on calls in flight) and leave the rest buffered, unparsed.
    """

    __slots__ = ("_buffer", "_last_offset", "_max_frame_bytes", "_offset")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._offset = 0  # where the next frame starts; what precedes it has been handed out
        self._last_offset = 0  # where the frame next_frame returned last started
        self._max_frame_bytes = max_frame_bytes

    @property
    def has_partial_frame(self) -> bool:
        """Bytes are buffered that do not make a complete frame yet."""
        available = len(self._buffer) - self._offset
        if available == 0:
            return False
        if available < HEADER.size:
            return True
        size: int = HEADER.unpack_from(self._buffer, self._offset)[0]
        return available < HEADER.size + size

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, limit: int) -> None:
        """The limit for the frames whose header has not been read yet."""
        self._max_frame_bytes = limit

    @property
    def next_frame_bytes(self) -> int:
        """The declared size of the first frame buffered, arriving or put back, once its
        header is in (else 0)."""
        if len(self._buffer) - self._offset < HEADER.size:
            return 0
        size: int = HEADER.unpack_from(self._buffer, self._offset)[0]
        return size

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    def append(self, data: bytes) -> None:
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = self._last_offset = 0
        self._buffer += data

    def compact(self) -> None:
        """Give back the memory of the frames handed out: next_frame only moves an offset, and
        append drops them only when more bytes come, so a peer that sent a large frame and then
        nothing kept it held. Not between next_frame and put_back."""
        if self._offset:
            self._buffer = self._buffer[self._offset :]  # a new buffer: the old one is freed
            self._offset = self._last_offset = 0

    def put_back(self) -> None:
        """Leave the frame next_frame returned last buffered, as if it had not been taken (the
        server looked at it, and will take it again later). Only before the next append."""
        self._offset = self._last_offset

    def next_frame(self) -> bytes | None:
        """The oldest complete frame body not handed out yet, or None."""
        buffer = self._buffer
        offset = self._offset
        if len(buffer) - offset < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(buffer, offset)
        if size > self._max_frame_bytes:
            raise FrameTooLarge(size, self._max_frame_bytes)
        end = offset + HEADER.size + size
        if end > len(buffer):
            return None
        self._last_offset = offset
        self._offset = end
        return bytes(buffer[offset + HEADER.size : end])

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data` and return every complete frame body, oldest first."""
        self.append(data)
        frames: list[bytes] = []
        while (body := self.next_frame()) is not None:
            frames.append(body)
        return frames
