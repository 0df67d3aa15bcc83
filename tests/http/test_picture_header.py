"""Reading a picture's declared size by hand, as Pillow reads it, for routing decodes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.http.avatars.picture_header import declared_size, decoded_pixels
from tests.hostile_pictures import busy_picture, encoded, many_scan_jpeg, tall_png

FORMATS = [
    ("PNG", "RGBA", {}),
    ("GIF", "RGB", {}),
    ("JPEG", "RGB", {}),
    ("JPEG", "RGB", {"progressive": True, "exif": b"Exif\0\0" + b"\0" * 64}),
    ("WEBP", "RGB", {"quality": 50}),
    ("WEBP", "RGBA", {"lossless": True}),
    ("WEBP", "RGB", {"exif": b"Exif\0\0" + b"\0" * 64}),  # VP8X
]


@pytest.mark.parametrize(("format", "mode", "options"), FORMATS, ids=str)
@pytest.mark.parametrize("size", [(400, 300), (3000, 257), (257, 3001)])
def test_the_declared_size_is_the_one_pillow_reads(
    format: str, mode: str, options: dict[str, object], size: tuple[int, int]
) -> None:
    upload = encoded(busy_picture(size, mode), format, **options)
    assert declared_size(upload) == Image.open(io.BytesIO(upload)).size == size


def test_hostile_headers_are_read_without_decoding() -> None:
    assert declared_size(tall_png(25_000_000)) == (1, 25_000_000)
    assert declared_size(many_scan_jpeg((2048, 1024), extra_scans=10)) == (2048, 1024)


@pytest.mark.parametrize(
    "upload",
    [b"", b"plain text", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00", b"RIFF\0\0\0\0WEBPVP8 "],
)
def test_what_it_cannot_read_has_no_size(upload: bytes) -> None:
    assert declared_size(upload) is None


def test_jpegs_count_the_pixels_of_their_reduced_decode() -> None:
    jpeg = encoded(busy_picture((4000, 3000)), "JPEG")
    assert decoded_pixels(jpeg, (4000, 3000), 256) == 500 * 375  # 1/8 keeps both sides >= 256
    assert decoded_pixels(jpeg, (600, 400), 256) == 600 * 400  # 1/2 would go below 256
    png = encoded(busy_picture((4000, 3000)), "PNG")
    assert decoded_pixels(png, (4000, 3000), 256) == 4000 * 3000


class WatchedUpload(bytes):
    """An upload that records the furthest offset read from it."""

    furthest = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def, override]
        last = index.stop if isinstance(index, slice) else index
        if last is not None:
            self.furthest = max(self.furthest, last)
        return super().__getitem__(index)


FIVE_MIB = 5 * 1024 * 1024


@pytest.mark.parametrize(
    "upload",
    [
        b"\xff\xd8" + b"\xff" * FIVE_MIB,  # fill bytes, walked one by one
        b"\xff\xd8" + b"\xff\xe0\x00\x02" * (FIVE_MIB // 4),  # empty APP0 segments
        b"\xff\xd8" + b"\xff\xd0" * (FIVE_MIB // 2),  # standalone markers
    ],
    ids=["fill-bytes", "empty-segments", "standalone-markers"],
)
def test_a_hostile_jpeg_header_is_given_up_after_its_first_bytes(upload: bytes) -> None:
    """The walk runs on the worker's event loop: what it reads must not grow with the upload."""
    watched = WatchedUpload(upload)
    assert declared_size(watched) is None
    assert 0 < watched.furthest <= 64 * 1024
