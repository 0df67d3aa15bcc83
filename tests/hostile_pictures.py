"""Hostile pictures for the upload tests, made with Pillow: many-scan progressive JPEGs and
pictures whose header declares far more pixels than their bytes suggest."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"


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


def tall_png(height: int) -> bytes:
    """A 1-pixel-wide 1-bit PNG of `height` rows: tens of millions of pixels in a few KiB."""
    return encoded(Image.new("1", (1, height), 0), "PNG")
