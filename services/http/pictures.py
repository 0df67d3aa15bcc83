"""Profile pictures: decode an upload with Pillow, refuse bombs, crop-resize, re-encode as WebP.

Accepted: PNG, JPEG, WebP and GIF (the first frame). The result is 256x256 WebP without any
metadata (EXIF, ICC, XMP): only the pixels survive, turned upright by the EXIF orientation
first. CPU-bound: call `process_picture` in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from services.http.errors import ApiError

PICTURE_SIZE = 256
CONTENT_TYPE = "image/webp"
EXTENSION = "webp"
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Well below Pillow's default (~89 Mpx): 25 Mpx holds a 6000x4000 camera picture, and decoding
# it takes at most ~100 MB. Pillow raises DecompressionBombError beyond twice its limit.
MAX_PIXELS = 25_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
WEBP_QUALITY = 85

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class Picture:
    data: bytes
    content_type: str
    extension: str

    @property
    def digest(self) -> str:
        """SHA-256 of the stored bytes, hex: what makes the blob key content-addressed."""
        return hashlib.sha256(self.data).hexdigest()


def not_an_image() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "the upload is not a PNG, JPEG, WebP or GIF image; upload a picture in one of these",
    )


def invalid_image(why: str) -> ApiError:
    return ApiError(400, "invalid_image", f"the picture cannot be used: {why}")


def process_picture(upload: bytes) -> Picture:
    """The upload as a 256x256 WebP picture, or ApiError 415 (no image) / 400 (bomb, broken)."""
    try:
        with Image.open(io.BytesIO(upload), formats=ACCEPTED_FORMATS) as image:
            _refuse_bombs(image)
            if image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= 256: far less work.
                image.draft("RGB", (PICTURE_SIZE, PICTURE_SIZE))
            image.load()
            return _encode(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise not_an_image() from None
    except Image.DecompressionBombError:
        raise _bomb() from None
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on bad data
        raise invalid_image(f"it is damaged or truncated ({type(exc).__name__})") from None


def _refuse_bombs(image: Image.Image) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that: treat the warning as an error.
    if image.width * image.height > MAX_PIXELS:
        raise _bomb()


def _bomb() -> ApiError:
    return invalid_image(
        f"it has more than {MAX_PIXELS // 1_000_000} million pixels; upload a smaller picture"
    )


def _encode(image: Image.Image) -> Picture:
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    converted = image.convert("RGBA" if has_alpha else "RGB")
    square = ImageOps.fit(converted, (PICTURE_SIZE, PICTURE_SIZE), method=Image.Resampling.LANCZOS)
    output = io.BytesIO()
    # The WebP encoder writes EXIF, ICC and XMP only when passed to save(): none are.
    square.save(output, format="WEBP", quality=WEBP_QUALITY, method=4)
    return Picture(data=output.getvalue(), content_type=CONTENT_TYPE, extension=EXTENSION)
