"""Hostile pictures for the upload tests, made with Pillow: many-scan progressive JPEGs and
pictures whose header declares far more pixels than their bytes suggest."""

from __future__ import annotations

import io
import zlib

from PIL import Image, ImageDraw

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"
_RST0 = b"\xff\xd0"


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    output = io.BytesIO()
    image.save(output, format=format, **options)
    return output.getvalue()


def busy_picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A picture with gradients and edges (not a flat colour), small once compressed."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    ImageDraw.Draw(image).ellipse((10, 10, size[0] - 10, size[1] - 10), outline="white", width=9)
    return image


def many_scan_jpeg(size: tuple[int, int], extra_scans: int) -> bytes:
    """A progressive JPEG with its smallest scan sent `extra_scans` more times at the end.

    libjpeg only warns about the repeated scan and decodes it again, each time a pass over the
    coefficients of a whole component: the CPU cost grows with the number of scans, the file by
    a few bytes per scan.
    """
    progressive = encoded(busy_picture(size), "JPEG", progressive=True, quality=60)
    first_scan = progressive.index(_SOS)
    end = progressive.rindex(_EOI)
    header = progressive[:first_scan]
    scans = [_SOS + scan for scan in progressive[first_scan:end].split(_SOS) if scan]
    return header + b"".join(scans) + min(scans, key=len) * extra_scans + _EOI


def many_scan_jpeg_behind_stuffed_zeros(size: tuple[int, int], extra_scans: int) -> bytes:
    """As many_scan_jpeg, each extra scan behind an empty comment segment and FF00: libjpeg
    skips the FF00 as junk, while a walk that reads it as a marker with a length jumps over
    the scans that follow."""
    jpeg = many_scan_jpeg(size, extra_scans)
    first_scan = jpeg.index(_SOS)
    end = jpeg.rindex(_EOI)
    scans = [_SOS + scan for scan in jpeg[first_scan:end].split(_SOS) if scan]
    padded = [scans[0], *(b"\xff\xfe\x00\x02\xff\x00" + scan for scan in scans[1:])]
    return jpeg[:first_scan] + b"".join(padded) + _EOI


def many_scans_behind_reserved_markers(extra_scans: int) -> bytes:
    """A small progressive JPEG with restart markers whose smallest scan is sent again
    `extra_scans` times, each copy with a reserved marker (FF02) and two fill-like bytes just
    before its first restart marker: libjpeg drops the marker there and decodes on, while a
    walk that reads a length after it jumps about 64 KiB over the scans that follow."""
    jpeg = encoded(
        busy_picture((64, 64)), "JPEG", progressive=True, quality=60, restart_marker_blocks=1
    )
    first_scan = jpeg.index(_SOS)
    end = jpeg.rindex(_EOI)
    scans = [_SOS + scan for scan in jpeg[first_scan:end].split(_SOS) if scan]
    smallest = min((scan for scan in scans if _RST0 in scan), key=len)
    restart = smallest.index(_RST0)
    hiding = smallest[:restart] + b"\xff\x02\xff\xff" + smallest[restart:]
    return jpeg[:first_scan] + b"".join(scans) + hiding * extra_scans + _EOI


def with_junk_after_app0(jpeg: bytes) -> bytes:
    """`jpeg` with one byte that is no marker after its first segment: libjpeg skips it (a
    warning) and decodes the rest."""
    assert jpeg[2:4] == b"\xff\xe0", "starts with an APP0 (JFIF) segment"
    end_of_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:end_of_app0] + b"\x00" + jpeg[end_of_app0:]


def as_mpo(jpeg: bytes) -> bytes:
    """`jpeg` with the APP2 multi-picture (MPF) segment of a 2-picture MPO after its APP0:
    Pillow then opens it as format "MPO", and decodes its first picture as a JPEG."""
    small = Image.new("RGB", (8, 8))
    mpo = encoded(small, "MPO", save_all=True, append_images=[small])
    position = 2
    while not (mpo[position + 1] == 0xE2 and mpo[position + 4 : position + 8] == b"MPF\0"):
        position += 2 + int.from_bytes(mpo[position + 2 : position + 4], "big")
    app2 = mpo[position : position + 2 + int.from_bytes(mpo[position + 2 : position + 4], "big")]
    end_of_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:end_of_app0] + app2 + jpeg[end_of_app0:]


def tall_png(height: int) -> bytes:
    """A 1-pixel-wide 1-bit PNG of `height` rows: tens of millions of pixels in a few KiB."""
    return encoded(Image.new("1", (1, height), 0), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png_behind_chunks(
    kind: bytes, count: int, *, damaged: bool = True, keyword: bytes = b"k"
) -> bytes:
    """A 256x256 PNG (small enough for the fast lane) with `count` compressed chunks of `kind`
    (iCCP or zTXt), each inflating to 1 MiB of zeros, which Pillow reads one after another
    while it opens the file; its pixel data is damaged unless `damaged` is false: CPU spent,
    then a decoder failure."""
    header = png_chunk(b"IHDR", (256).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
    inflating = zlib.compress(bytes(1 << 20), 9)
    if kind == b"iTXt":  # keyword, compressed, method, language, translated keyword
        chunk = png_chunk(kind, keyword + b"\x00\x01\x00\x00\x00" + inflating)
    else:  # iCCP and zTXt: name or keyword, method
        chunk = png_chunk(kind, keyword + b"\x00\x00" + inflating)
    if damaged:
        pixels = png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64)
    else:
        rows = b"".join(b"\x00" + bytes(256 * 3) for _ in range(256))
        pixels = png_chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + header + chunk * count + pixels + png_chunk(b"IEND", b"")


def truncated_progressive_jpeg(size: tuple[int, int]) -> bytes:
    """A progressive JPEG of noise cut short: small enough once decoded at 1/8 for the fast
    lane, yet every scan's coefficients are decoded (4800x3200: about 0.4 s of CPU) before the
    decoder finds the end missing."""
    whole = encoded(
        Image.effect_noise(size, 80).convert("RGB"), "JPEG", quality=95, progressive=True
    )
    return whole[: len(whole) * 19 // 20]
