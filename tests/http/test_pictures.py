"""Picture processing with Pillow: formats, crop-resize, orientation, metadata, bad input."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from services.contract import auth_pb2 as pb
from services.foundation.rpc.framing import SMALLEST_MAX_FRAME_BYTES
from services.http.avatars.picture_limits import PictureLimits
from services.http.avatars.pictures import PICTURE_SIZE, PictureRefused, process_picture
from tests.hostile_pictures import png_behind_chunks

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    output = io.BytesIO()
    image.save(output, format=format, **options)
    return output.getvalue()


def halves(
    size: tuple[int, int],
    first: tuple[int, int, int],
    second: tuple[int, int, int],
    *,
    vertical: bool,
) -> Image.Image:
    """Two colours split across the width (vertical=True: left/right) or the height."""
    image = Image.new("RGB", size, first)
    width, height = size
    box = (width // 2, 0, width, height) if vertical else (0, height // 2, width, height)
    ImageDraw.Draw(image).rectangle(box, fill=second)
    return image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def close_to(actual: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual[:3], expected, strict=True))


def refusal(data: bytes) -> tuple[int, str]:
    with pytest.raises(PictureRefused) as refused:
        process_picture(data)
    return refused.value.status_code, refused.value.code


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_accepted_format_becomes_a_256_square_webp(format: str) -> None:
    picture = process_picture(encoded(Image.new("RGB", (640, 480), GREEN), format))
    image = decoded(picture.data)
    assert (image.format, image.size) == ("WEBP", (PICTURE_SIZE, PICTURE_SIZE))
    assert picture.content_type == "image/webp" and picture.extension == "webp"
    assert close_to(image.convert("RGB").getpixel((128, 128)), GREEN)


def test_the_largest_stored_picture_fits_in_the_lowest_frame_limit() -> None:
    """Noise compresses worst: its WebP, in the frame that stores it, must fit in the lowest
    GATEHOUSE_MAX_FRAME_BYTES either tier accepts."""
    noise = Image.frombytes(
        "RGBA", (PICTURE_SIZE, PICTURE_SIZE), random.randbytes(PICTURE_SIZE**2 * 4)
    )
    upload = io.BytesIO()
    noise.save(upload, format="PNG")
    stored = process_picture(upload.getvalue())
    assert len(stored.data) > 64 * 1024  # what the lowest limit was
    put = pb.PutBlobRequest(key="k" * 200, content_type=stored.content_type, data=stored.data)
    envelope = pb.Envelope(call_id=2**32, method=99, payload=put.SerializeToString())
    assert envelope.ByteSize() < SMALLEST_MAX_FRAME_BYTES


def test_a_wide_picture_is_cropped_to_its_centre() -> None:
    # 900x300: the centre square (300..600) is half red, half blue; the red outer third is cut.
    image = Image.new("RGB", (900, 300), RED)
    ImageDraw.Draw(image).rectangle((450, 0, 900, 300), fill=BLUE)
    square = decoded(process_picture(encoded(image, "PNG")).data).convert("RGB")
    assert close_to(square.getpixel((20, 128)), RED)
    assert close_to(square.getpixel((235, 128)), BLUE)


def test_a_small_picture_is_enlarged() -> None:
    square = decoded(process_picture(encoded(Image.new("RGB", (16, 16), RED), "PNG")).data)
    assert square.size == (PICTURE_SIZE, PICTURE_SIZE)


def test_the_exif_orientation_is_applied_then_every_piece_of_metadata_dropped() -> None:
    # Stored landscape, red left / blue right; orientation 6 means "rotate 90 degrees clockwise
    # to view", which puts red on top and blue at the bottom.
    image = halves((600, 400), RED, BLUE, vertical=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010E] = "secret description"  # ImageDescription
    exif[0x8825] = {0x0002: (52.0, 31.0, 0.0)}  # GPS latitude
    icc = b"\0" * 128  # not a real profile: only its presence matters here
    source = encoded(image, "JPEG", exif=exif.tobytes(), icc_profile=icc, quality=95)
    assert decoded(source).getexif()

    picture = process_picture(source)
    square = decoded(picture.data)
    assert close_to(square.convert("RGB").getpixel((128, 20)), RED)
    assert close_to(square.convert("RGB").getpixel((128, 235)), BLUE)
    assert not square.getexif()
    assert not {"exif", "icc_profile", "xmp"} & set(square.info)
    assert b"secret description" not in picture.data
    assert all(chunk not in picture.data for chunk in (b"EXIF", b"ICCP", b"XMP "))


def test_transparency_is_kept() -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((100, 100, 200, 200), fill=(*RED, 255))
    square = decoded(process_picture(encoded(image, "PNG")).data)
    assert square.mode == "RGBA"
    assert square.getpixel((5, 5))[3] == 0
    assert square.getpixel((128, 128))[3] == 255


def test_the_first_frame_of_an_animation_is_used() -> None:
    frames = [Image.new("RGB", (200, 200), colour) for colour in (RED, BLUE, GREEN)]
    output = io.BytesIO()
    frames[0].save(
        output, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    square = decoded(process_picture(output.getvalue()).data)
    assert getattr(square, "n_frames", 1) == 1
    assert close_to(square.convert("RGB").getpixel((128, 128)), RED)


def test_a_large_jpeg_is_decoded_small() -> None:
    # 4000x3000 decodes at 1/8 scale (500x375) thanks to draft(), then becomes 256x256.
    image = halves((4000, 3000), RED, BLUE, vertical=False)
    square = decoded(process_picture(encoded(image, "JPEG", quality=80)).data)
    assert square.size == (PICTURE_SIZE, PICTURE_SIZE)
    assert close_to(square.convert("RGB").getpixel((128, 20)), RED)


def test_the_same_upload_gives_the_same_bytes() -> None:
    upload = encoded(Image.new("RGB", (300, 200), BLUE), "PNG")
    first, second = process_picture(upload), process_picture(upload)
    assert first.data == second.data and first.digest == second.digest
    assert len(first.digest) == 64


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text",
        b"%PDF-1.7\n" + b"0" * 100,
        encoded(Image.new("RGB", (50, 50)), "BMP"),  # an image, but not an accepted format
        encoded(Image.new("RGB", (50, 50)), "TIFF"),
    ],
    ids=["empty", "text", "pdf", "bmp", "tiff"],
)
def test_what_is_no_accepted_image_is_unsupported_media_type(data: bytes) -> None:
    assert refusal(data) == (415, "unsupported_media_type")


def test_a_truncated_image_is_invalid() -> None:
    whole = encoded(Image.effect_noise((400, 400), 60).convert("RGB"), "PNG")
    assert refusal(whole[: len(whole) // 2]) == (400, "invalid_image")


def test_a_corrupt_jpeg_body_is_invalid() -> None:
    whole = bytearray(encoded(Image.effect_noise((400, 400), 60).convert("RGB"), "JPEG"))
    whole[400:] = b"\xff" * (len(whole) - 400)
    assert refusal(bytes(whole)) == (400, "invalid_image")


@pytest.mark.parametrize(
    ("kind", "allowed", "why"),
    [
        (b"iCCP", 1, "more than one colour profile"),
        (b"zTXt", 16, "compressed text chunks"),
        (b"iTXt", 16, "compressed text chunks"),
    ],
)
def test_a_png_of_many_inflating_chunks_is_refused_before_pillow_opens_it(
    kind: bytes, allowed: int, why: str
) -> None:
    """900 of them, 1 KiB each inflating to 1 MiB, cost a decode's whole CPU limit in Pillow's
    open (text too: its bound on text is skipped for an empty keyword); as many as a picture
    needs are taken."""
    many = png_behind_chunks(kind, 900, damaged=False, keyword=b"")
    assert refusal(many) == (400, "invalid_image")
    with pytest.raises(PictureRefused, match=why):
        process_picture(many)  # by the walk: Pillow would decode it after 2-4 s
    enough = process_picture(png_behind_chunks(kind, allowed, damaged=False))
    assert enough.content_type == "image/webp"


MAX_PIXELS = PictureLimits().max_pixels


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "size",
    [(MAX_PIXELS // 5000 + 1, 5000), (8_000, 6_000)],
    ids=["just over the pixel cap", "far over the pixel cap"],
)
def test_decompression_bombs_are_refused_before_decoding(size: tuple[int, int]) -> None:
    # A 1-bit PNG of tens of millions of pixels compresses to a few KiB.
    bomb = encoded(Image.new("1", size, 0), "PNG")
    assert len(bomb) < 5 * 1024 * 1024
    status, code = refusal(bomb)
    assert (status, code) == (400, "invalid_image")
