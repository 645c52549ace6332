"""Hostile and odd images: each is decoded correctly (orientation and colour right) or refused
with an error that names the file."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from common.errors import InputError
from common.imageio import decode

NAME = "s3://in/odd.img"


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def red_left_blue_right(size=(40, 20)) -> Image.Image:
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return img


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"just some text, not a picture\n" * 10, "not a recognised image format"),
        (encoded(red_left_blue_right(), "PNG")[:60], "corrupt or truncated"),
        (encoded(red_left_blue_right((400, 400)), "JPEG")[:300], "corrupt or truncated"),
    ],
)
def test_broken_files_are_refused_by_name(data, message):
    with pytest.raises(InputError, match=message) as info:
        decode(data, NAME)
    assert str(info.value).startswith(NAME)


def test_decompression_bomb_and_huge_dimensions_refused_before_decoding():
    bomb = encoded(Image.new("L", (12_000, 12_000)), "PNG")  # 144 Mpx in ~150 kB
    assert len(bomb) < 1_000_000
    with pytest.raises(InputError, match=r"decompression bomb|exceeds the limit"):
        decode(bomb, NAME)
    wide = encoded(Image.new("RGB", (50_000, 2)), "PNG")
    with pytest.raises(InputError, match="50000x2 pixels exceeds the limit of 64000"):
        decode(wide, NAME, max_pixels=64_000)


def test_exif_rotation_is_applied():
    img = red_left_blue_right()  # landscape, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display by rotating 90 degrees clockwise
    out = decode(encoded(img, "JPEG", exif=exif.tobytes(), quality=95), NAME)
    assert out.size == (20, 40)  # portrait now
    top, bottom = out.getpixel((10, 2)), out.getpixel((10, 37))
    assert top[0] > 200 and top[2] < 60  # red ends up on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("img", "fmt", "expected"),
    [
        (Image.new("L", (8, 8), 128), "PNG", (128, 128, 128)),
        (Image.new("I;16", (8, 8), 65535), "PNG", (255, 255, 255)),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent: white
        (Image.new("LA", (8, 8), (0, 255)), "PNG", (0, 0, 0)),
        (Image.new("P", (8, 8), 3), "GIF", None),
    ],
)
def test_modes_become_rgb_with_the_right_colour(img, fmt, expected):
    out = decode(encoded(img, fmt), NAME)
    assert out.mode == "RGB" and out.size == (8, 8)
    if expected is not None:
        assert all(abs(a - b) <= 3 for a, b in zip(out.getpixel((4, 4)), expected, strict=True))


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode(buf.getvalue(), NAME)
    assert out.getpixel((5, 5))[0] > 200 and out.getpixel((5, 5))[1] < 60
