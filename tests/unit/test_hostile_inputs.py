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


def test_only_the_accepted_formats_are_decoded():
    for fmt in ("ICO", "TGA", "PCX", "PPM"):  # Pillow reads these; the fleet does not
        with pytest.raises(InputError, match="not a recognised image format") as info:
            decode(encoded(Image.new("RGB", (32, 32), (10, 20, 30)), fmt), NAME)
        assert "accepted: JPEG, PNG, WEBP, TIFF, GIF, BMP" in str(info.value)
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP"):
        assert decode(encoded(Image.new("RGB", (32, 32), (200, 20, 30)), fmt), NAME).size == (
            32,
            32,
        )


def test_float_and_wide_integer_images_scale_into_8_bits_or_are_refused():
    ramp = Image.linear_gradient("L").resize((64, 64)).point(lambda v: v / 255.0, "F")
    out = decode(encoded(ramp, "TIFF"), NAME)  # a 32-bit float TIFF in 0..1
    assert out.getpixel((0, 0))[0] <= 2 and out.getpixel((0, 63))[0] >= 253  # not black
    assert len({out.getpixel((0, y))[0] for y in range(64)}) > 32  # not a uniform grey
    hdr = Image.new("F", (32, 32), 40.0)  # linear light, no meaning in 0..255
    with pytest.raises(InputError, match=r"floating-point image with values 40\.\.40"):
        decode(encoded(hdr, "TIFF"), NAME)
    wide = Image.new("I", (32, 32), 1_000_000)  # 32-bit integers
    with pytest.raises(InputError, match="not an 8- or 16-bit image"):
        decode(encoded(wide, "TIFF"), NAME)


def test_degenerate_and_huge_images_name_the_projects_setting():
    strip = encoded(Image.new("RGB", (4000, 1), (1, 2, 3)), "PNG")
    with pytest.raises(
        InputError,
        match=r"4000x1 pixels: a side shorter than 16 "
        r"\(STYLEBATCH_MIN_INPUT_SIDE\)",
    ):
        decode(strip, NAME, min_side=16)
    bomb = encoded(Image.new("L", (20_000, 20_000)), "PNG")
    with pytest.raises(InputError, match="STYLEBATCH_MAX_INPUT_PIXELS"):
        decode(bomb, NAME)


def test_alpha_goes_through_the_same_allow_list_and_limits():
    from common.imageio import decode_alpha

    rgba = Image.new("RGBA", (40, 20), (10, 20, 30, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 10, 20))
    alpha = decode_alpha(encoded(rgba, "PNG"), NAME)
    assert alpha.mode == "L" and alpha.getpixel((5, 5)) == 255 and alpha.getpixel((30, 5)) == 0
    assert decode_alpha(encoded(Image.new("RGB", (32, 32)), "PNG"), NAME) is None
    exif = Image.Exif()
    exif[0x0112] = 6  # upright like decode()'s picture
    assert decode_alpha(encoded(rgba, "PNG", exif=exif.tobytes()), NAME).size == (20, 40)
    with pytest.raises(InputError, match="not a recognised image format"):
        decode_alpha(encoded(rgba, "TGA"), NAME)  # Pillow reads TGA with alpha; the fleet not
    with pytest.raises(InputError, match="exceeds the limit of 100"):
        decode_alpha(encoded(rgba, "PNG"), NAME, max_pixels=100)
    with pytest.raises(InputError, match="STYLEBATCH_MIN_INPUT_SIDE"):
        decode_alpha(encoded(rgba, "PNG"), NAME, min_side=32)


@pytest.mark.parametrize("hostile", ["tga", "too-many-pixels"])
def test_a_hostile_mask_is_not_decoded_for_the_contact_sheet(tmp_path, images, hostile):
    """The sheet tints a content's protected region; a mask the renders would refuse (format
    outside the allow-list, over STYLEBATCH_MAX_INPUT_PIXELS) is not decoded for it either."""
    import dataclasses

    from common.contact_sheet import CELL, LABEL, PAD, sheet_for
    from common.expand import plan_job
    from common.storage import open_storage
    from common.summary import Summary
    from tests.support.manifests import local_settings, tiny_manifest, write_manifest

    settings = dataclasses.replace(local_settings(), max_input_pixels=100_000)
    full = Image.new("L", (200, 200), 255)  # protects everything: the whole cell tinted
    (tmp_path / "good.png").write_bytes(encoded(full, "PNG"))
    (tmp_path / "mask.tga").write_bytes(encoded(full, "TGA"))
    (tmp_path / "huge.png").write_bytes(encoded(Image.new("L", (400, 400), 255), "PNG"))

    def content_cell(mask: str) -> tuple[int, int, int]:
        data = tiny_manifest(images, tmp_path / "out")
        data["content"] = [{"uri": str(images["tubingen"]), "mask": str(tmp_path / mask)}]
        plan = plan_job(write_manifest(tmp_path / mask.replace(".", "-"), data), settings)
        sheet = sheet_for(Summary.of(plan), open_storage(plan.location, settings), settings)
        centre = (PAD + CELL // 2, PAD + (CELL + LABEL + PAD) + CELL // 2)
        return Image.open(io.BytesIO(sheet)).convert("RGB").getpixel(centre)

    def green(pixel: tuple[int, int, int]) -> int:
        return pixel[1] - (pixel[0] + pixel[2]) // 2

    tinted = content_cell("good.png")
    plain = content_cell({"tga": "mask.tga", "too-many-pixels": "huge.png"}[hostile])
    assert green(tinted) > green(plain) + 30  # the good mask tints; the hostile one is ignored
