"""Counting a PNG's colour profiles by walking its chunks, without inflating anything.

Pillow inflates every `iCCP` chunk while it opens a PNG, before any check of ours can run, and
with no total bound: 900 of them, each 1 KiB of zlib that inflates to 1 MiB, cost the whole CPU
limit of a decode in a 949 KB upload. The PNG specification allows one. The walk reads each
chunk's 8-byte header and skips its data, so its cost is the number of chunks, not the bytes.
"""

from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ICC_PROFILE = b"iCCP"
_END = b"IEND"


def colour_profiles(data: bytes, stop_after: int) -> int:
    """The `iCCP` chunks of the PNG `data`, counting at most to `stop_after` + 1; 0 for what
    is no PNG. Truncated data ends the walk (the decoder then refuses it)."""
    if not data.startswith(PNG_SIGNATURE):
        return 0
    profiles = 0
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data) and profiles <= stop_after:
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == _END:
            break
        if kind == _ICC_PROFILE:
            profiles += 1
        position += 12 + length  # length, type, data, CRC
    return profiles
