"""The width and height a picture's header declares, read from its first bytes by hand (no
decoder runs in the HTTP worker), and how many pixels decoding it will produce.

Used only to route a decode (services.http.avatars.decode_pool): a header this module cannot read is
treated as a large picture, and the child decoding it applies every check itself.

This runs in the HTTP worker, on its event loop, so its cost never grows with the upload: a
JPEG's walk to its frame header gives up after _JPEG_MAX_STEPS markers and fill bytes (a
phone's JPEG has about ten segments before it), each step costing the same whatever the size.
"""

from __future__ import annotations

import struct

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are no SOF
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
# Decoded JPEGs are scaled down by up to this factor (Pillow's draft mode, while both sides
# stay at least the picture size).
_JPEG_MAX_SCALE = 8
# Markers and fill bytes walked before the frame header; past it the JPEG is not routed.
_JPEG_MAX_STEPS = 64


def declared_size(upload: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, GIF, WebP or JPEG, or None."""
    if upload.startswith(b"\x89PNG\r\n\x1a\n") and upload[12:16] == b"IHDR" and len(upload) >= 24:
        return struct.unpack(">II", upload[16:24])
    if upload.startswith((b"GIF87a", b"GIF89a")) and len(upload) >= 10:
        return struct.unpack("<HH", upload[6:10])
    if upload[:4] == b"RIFF" and upload[8:12] == b"WEBP":
        return _webp_size(upload)
    if upload.startswith(b"\xff\xd8"):
        return _jpeg_size(upload)
    return None


def decoded_pixels(upload: bytes, size: tuple[int, int], picture_size: int) -> int:
    """Pixels that decoding produces: JPEGs decode at 1/2, 1/4 or 1/8 of their size."""
    width, height = size
    if upload.startswith(b"\xff\xd8"):
        scale = 1
        while scale < _JPEG_MAX_SCALE and min(width, height) // (scale * 2) >= picture_size:
            scale *= 2
        return -(-width // scale) * -(-height // scale)
    return width * height


def _webp_size(upload: bytes) -> tuple[int, int] | None:
    chunk = upload[12:16]
    if chunk == b"VP8X" and len(upload) >= 30:
        width = int.from_bytes(upload[24:27], "little") + 1
        height = int.from_bytes(upload[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(upload) >= 30 and upload[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", upload[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(upload) >= 25 and upload[20] == 0x2F:
        bits = int.from_bytes(upload[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(upload: bytes) -> tuple[int, int] | None:
    position = 2
    for _ in range(_JPEG_MAX_STEPS):
        if position + 4 > len(upload) or upload[position] != 0xFF:
            return None
        marker = upload[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0x00:  # no marker (libjpeg skips it): a walk by lengths would lose its way
            return None
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in _JPEG_SOF:
            if position + 9 > len(upload):
                return None
            height, width = struct.unpack(">HH", upload[position + 5 : position + 9])
            return width, height
        if marker == 0xDA:  # a scan before any frame header: not a JPEG to route
            return None
        position += 2 + int.from_bytes(upload[position + 2 : position + 4], "big")
    return None
