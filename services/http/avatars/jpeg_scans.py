"""Counting the scans of a JPEG by walking its segments, without decoding anything.

A progressive JPEG is sent as a series of scans (SOS segments), and the decoder passes over
the whole coefficient buffer once per scan: a small file with thousands of scans costs seconds
of CPU. Counting the SOS markers is a linear walk over the bytes.
"""

from __future__ import annotations

_MARKER = 0xFF
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
# Markers walked as standing alone, without a length field: TEM and RST0..RST7, and the
# reserved FF02..FFBF, which libjpeg drops without a length where it resynchronises at a
# restart point and decodes on (anywhere else it refuses the file, so skipping them can only
# count more scans than it would decode, never fewer).
_STANDALONE = frozenset({*range(0x01, 0xC0), *range(0xD0, 0xD8)})


def count_scans(data: bytes, stop_after: int) -> int:
    """The number of SOS segments in the JPEG `data`, counting at most to `stop_after` + 1.

    Bytes between segments that are not a marker (FF00 included) are skipped up to the next
    marker, as libjpeg skips them (with a warning) and goes on decoding: stopping there, or
    reading FF00 as a marker with a length, would hide the scans behind it. Truncated data
    ends the walk.
    """
    if not data.startswith(b"\xff\xd8"):
        return 0
    scans = 0
    position = 2
    end = len(data)
    while position + 1 < end and scans <= stop_after:
        if data[position] != _MARKER:
            position = data.find(b"\xff", position)
            if position < 0:
                return scans
            continue
        marker = data[position + 1]
        if marker == _MARKER:  # fill byte before a marker
            position += 1
            continue
        if marker == 0x00:  # FF00 is no marker: libjpeg skips it as junk, so must this walk
            position += 2
            continue
        if marker == _EOI:
            return scans
        if marker in _STANDALONE or marker == _SOI:
            position += 2
            continue
        if position + 3 >= end:
            return scans
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == _SOS:
            scans += 1
            position = _end_of_entropy_coded_data(data, position)
    return scans


def _end_of_entropy_coded_data(data: bytes, position: int) -> int:
    """The offset of the first marker after a scan's entropy-coded data."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        # FF00 is a stuffed data byte, FFD0..FFD7 restart markers inside the scan, FFFF fill.
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == _MARKER:
            position += 1
            continue
        return position
