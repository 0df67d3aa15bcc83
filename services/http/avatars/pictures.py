"""Profile pictures: decode an upload with Pillow, refuse bombs, crop-resize, re-encode as WebP.

Accepted: PNG, JPEG, WebP and GIF (the first frame). The result is 256x256 WebP without any
metadata (EXIF, ICC, XMP): only the pixels survive, turned upright by the EXIF orientation
first. CPU- and memory-bound: the HTTP tier calls `process_picture` only in a child process
with resource limits (services.http.avatars.decode_pool). This module imports nothing that touches
metrics or the network, so that child stays small.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from services.http.avatars.picture_limits import PictureLimits, limit_violation
from services.http.avatars.png_chunks import inflation_problem

PICTURE_SIZE = 256
CONTENT_TYPE = "image/webp"
EXTENSION = "webp"
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Pillow's own bomb check is a backstop only: PictureLimits refuses far smaller pictures first.
Image.MAX_IMAGE_PIXELS = 2 * PictureLimits().max_pixels
WEBP_QUALITY = 85

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# ImageOps.exif_transpose's table, applied here to the reduced picture (see _encode).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


class PictureRefused(Exception):
    """An upload that cannot become a picture; `status_code` and `code` as in the API's errors.

    `while_decoding`: the decoder failed, which a tighter memory limit can cause too; other
    refusals are decided from the header alone.
    """

    def __init__(
        self, status_code: int, code: str, message: str, *, while_decoding: bool = False
    ) -> None:
        super().__init__(status_code, code, message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.while_decoding = while_decoding


class DecodeOutOfMemory(PictureRefused):
    """A picture whose decoding failed to allocate memory (the child's RLIMIT_AS)."""

    def __init__(self) -> None:
        super().__init__(
            400,
            "invalid_image",
            "the picture cannot be used: it needs too much memory to decode",
            while_decoding=True,
        )


@dataclass(frozen=True)
class Picture:
    data: bytes
    content_type: str
    extension: str

    @property
    def digest(self) -> str:
        """SHA-256 of the stored bytes, hex: what makes the blob key content-addressed."""
        return hashlib.sha256(self.data).hexdigest()


def not_an_image() -> PictureRefused:
    return PictureRefused(
        415,
        "unsupported_media_type",
        "the upload is not a PNG, JPEG, WebP or GIF image; upload a picture in one of these",
    )


def invalid_image(why: str, *, while_decoding: bool = False) -> PictureRefused:
    return PictureRefused(
        400, "invalid_image", f"the picture cannot be used: {why}", while_decoding=while_decoding
    )


def looks_like_an_accepted_image(upload: bytes) -> bool:
    """Whether `upload` starts like a PNG, JPEG, GIF or WebP file: a check of a few bytes."""
    return upload.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")) or (
        upload[:4] == b"RIFF" and upload[8:12] == b"WEBP"
    )


def process_picture(upload: bytes, limits: PictureLimits = PictureLimits()) -> Picture:
    """The upload as a 256x256 WebP picture, or PictureRefused 415 (no image) / 400 (bomb,
    broken, beyond `limits`)."""
    inflation = inflation_problem(upload)  # before Pillow's open inflates what it holds
    if inflation is not None:
        raise invalid_image(inflation)
    try:
        with Image.open(io.BytesIO(upload), formats=ACCEPTED_FORMATS) as image:
            # One APP2 "MPF" segment makes Pillow open a JPEG as an MPO (a JpegImageFile too):
            # its first picture decodes as any JPEG does, so the same checks and draft apply.
            jpeg = isinstance(image, JpegImageFile)
            violation = limit_violation(limits, jpeg, image.size, upload)
            if violation is not None:
                raise invalid_image(violation)
            if jpeg:
                # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= 256: far less work.
                image.draft("RGB", (PICTURE_SIZE, PICTURE_SIZE))
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
            image.load()
            return _encode(image, orientation)
    except UnidentifiedImageError:
        raise not_an_image() from None
    except Image.DecompressionBombError:
        raise invalid_image("it has too many pixels; upload a smaller picture") from None
    except MemoryError:
        raise DecodeOutOfMemory() from None
    except PictureRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad data
        raise invalid_image(
            f"it is damaged or truncated ({type(exc).__name__})", while_decoding=True
        ) from None


def _encode(image: Image.Image, orientation: int) -> Picture:
    # Peak memory is the decoded picture plus one smaller copy: convert only when the mode
    # needs it, shrink by an integer factor at once (both sides stay >= 256), and only then
    # turn it upright and crop-resize.
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    mode = "RGBA" if has_alpha else "RGB"
    working = image if image.mode == mode else image.convert(mode)
    factor = min(working.size) // PICTURE_SIZE
    if factor >= 2:
        working = working.reduce(factor)
    if orientation in _ORIENTATION_TRANSPOSE:
        working = working.transpose(_ORIENTATION_TRANSPOSE[orientation])
    square = ImageOps.fit(working, (PICTURE_SIZE, PICTURE_SIZE), method=Image.Resampling.LANCZOS)
    output = io.BytesIO()
    # The WebP encoder writes EXIF, ICC and XMP only when passed to save(): none are.
    square.save(output, format="WEBP", quality=WEBP_QUALITY, method=4)
    return Picture(data=output.getvalue(), content_type=CONTENT_TYPE, extension=EXTENSION)
