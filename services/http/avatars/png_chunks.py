"""Bounding what Pillow inflates while it opens a PNG, by walking the PNG's chunks first.

Pillow inflates every compressed ancillary chunk while it opens a PNG, before any check of
ours can run: each `iCCP` (a colour profile) and each `zTXt` and `iTXt` (text), up to 1 MiB
each, and its 64 MB bound on text is skipped for some malformed ones (an empty keyword, a bad
checksum, text that is not UTF-8). 900 such chunks, each 1 KiB of zlib inflating to 1 MiB, cost
2.4-3.7 s of CPU in a 949 KB upload. The PNG specification allows one profile; a picture is
re-encoded to WebP without its text, so a few text chunks are plenty. The walk reads each
chunk's 8-byte header and skips its data, so its cost is the number of chunks, not the bytes.
"""

from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_PROFILE = b"iCCP"
_COMPRESSED_TEXT = frozenset({b"zTXt", b"iTXt"})
_END = b"IEND"
MAX_COMPRESSED_TEXT_CHUNKS = 16


def inflation_problem(data: bytes) -> str | None:
    """Why Pillow must not open the PNG `data` (too many chunks it would inflate), or None
    (also for what is no PNG). Truncated data ends the walk (the decoder then refuses it)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    profiles = texts = 0
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == _END:
            break
        if kind == _COLOUR_PROFILE:
            profiles += 1
            if profiles > 1:
                return "it holds more than one colour profile (iCCP chunk); a PNG has one"
        elif kind in _COMPRESSED_TEXT:
            texts += 1
            if texts > MAX_COMPRESSED_TEXT_CHUNKS:
                return (
                    f"it holds more than {MAX_COMPRESSED_TEXT_CHUNKS} compressed text chunks;"
                    " save it again without its metadata"
                )
        position += 12 + length  # length, type, data, CRC
    return None
