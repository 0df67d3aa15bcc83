"""What an upload may be before its pixels are decoded: the checks that need only its header.

A picture's cost is set by what its header declares (width, height, and for a progressive
JPEG its number of scans), not by its size in bytes: a 48 KB PNG can declare 25 million
pixels, a 140 KB JPEG thousands of scans. These checks refuse such pictures before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.http.avatars.jpeg_scans import count_scans


@dataclass(frozen=True)
class PictureLimits:
    max_side: int = 8192
    max_pixels: int = 16 * 1024 * 1024
    max_aspect_ratio: float = 20.0
    max_jpeg_scans: int = 64


def limit_violation(
    limits: PictureLimits, jpeg: bool, size: tuple[int, int], upload: bytes
) -> str | None:
    """Why a picture of this header cannot be decoded, or None when it may be. `jpeg`: it
    decodes as a JPEG (Pillow's MPO, a JPEG with a multi-picture segment, included)."""
    width, height = size
    if width < 1 or height < 1:
        return "it has no pixels"
    if max(width, height) > limits.max_side:
        return f"it is {width}x{height} pixels; each side may be at most {limits.max_side}"
    if width * height > limits.max_pixels:
        return (
            f"it has {width * height:,} pixels; at most {limits.max_pixels:,} are accepted, "
            "upload a smaller picture"
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        return (
            f"it is {width}x{height} pixels; the longer side may be at most "
            f"{limits.max_aspect_ratio:g} times the shorter"
        )
    if jpeg:
        scans = count_scans(upload, stop_after=limits.max_jpeg_scans)
        if scans > limits.max_jpeg_scans:
            return (
                f"it is a progressive JPEG of more than {limits.max_jpeg_scans} scans; "
                "save it again as a baseline JPEG"
            )
    return None
