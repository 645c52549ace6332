"""Protected regions and brand palettes, rendered on the CPU: protected pixels keep the photo
exactly (or partly, with a strength), the rest is styled, masks of another size fit, a broken
mask fails only its render, and a palette pulls colours without touching protected pixels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from common.expand import plan_job
from common.imageio import embedded_metadata
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

torch = pytest.importorskip("torch")


def diff(a: Image.Image, b: Image.Image, box: tuple[int, int, int, int]) -> float:
    """Mean absolute RGB difference inside ``box``."""
    ta = np.asarray(a.convert("RGB").crop(box), dtype=np.float32)
    tb = np.asarray(b.convert("RGB").crop(box), dtype=np.float32)
    return float(np.abs(ta - tb).mean())


@pytest.fixture
def shots(tmp_path, images):
    """The test photo, a mask twice its size keeping the left 40 %, and a broken mask."""
    photo = Image.open(images["tubingen"]).convert("RGB")  # 64 x 48
    mask = Image.new("L", (128, 96), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 51, 95], fill=255)
    mask.save(tmp_path / "mask.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a mask")
    rgba = photo.convert("RGBA")
    rgba.putalpha(mask.resize(photo.size))
    rgba.save(tmp_path / "cutout.png")
    return tmp_path


def render(tmp_path, images, weights_file, content, **params):
    from workers.local import run_local
    from workers.render import Renderer

    data = tiny_manifest(images, tmp_path / "out", **params)
    data["content"] = content
    data["styles"] = data["styles"][:1]
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), str(weights_file))
    summary = run_local(plan, local_settings(), "cpu")
    renderer = Renderer(local_settings(), str(weights_file), "cpu")
    return plan, summary, renderer


def test_protected_pixels_keep_the_photo_and_the_rest_is_styled(
    tmp_path, images, weights_file, shots
):
    content = [{"uri": str(images["tubingen"]), "mask": str(shots / "mask.png")}]
    plan, summary, renderer = render(tmp_path, images, weights_file, content, sizes=[48, "40x40"])
    assert {r.status for r in summary.renders} == {"done"}
    for record, spec in zip(summary.renders, plan.renders, strict=True):
        out = Image.open(tmp_path / "out" / record.key)
        photo = renderer.content_at_size(spec)
        assert out.size == photo.size
        width, height = out.size
        inside = (0, 0, int(0.4 * width) - 2, height)  # clear of the feathered edge
        outside = (int(0.6 * width), 0, width, height)
        assert diff(out, photo, inside) == 0  # unchanged, pixel for pixel
        assert diff(out, photo, outside) > 5  # styled
    meta = embedded_metadata((tmp_path / "out" / summary.renders[0].key).read_bytes())
    assert meta["mask"] == [str(shots / "mask.png"), 1.0]
    assert str(shots / "mask.png") in meta["inputs"]  # the mask's content is part of the id


def test_partial_strength_alpha_masks_and_ids(tmp_path, images, weights_file, shots):
    half = [{"uri": str(images["tubingen"]), "mask": str(shots / "mask.png"), "mask_strength": 0.5}]
    plan, summary, renderer = render(tmp_path / "half", images, weights_file, half)
    out = Image.open(tmp_path / "half" / "out" / summary.renders[0].key)
    photo = renderer.content_at_size(plan.renders[0])
    inside, outside = (0, 0, 16, out.height), (30, 0, out.width, out.height)
    assert 0 < diff(out, photo, inside) < diff(out, photo, outside)  # partly protected

    cutout = [{"uri": str(shots / "cutout.png"), "mask": "alpha"}]
    plan2, summary2, renderer2 = render(tmp_path / "alpha", images, weights_file, cutout)
    out2 = Image.open(tmp_path / "alpha" / "out" / summary2.renders[0].key)
    photo2 = renderer2.content_at_size(plan2.renders[0])
    assert diff(out2, photo2, (0, 0, 16, out2.height)) == 0

    plain = plan_job(
        write_manifest(tmp_path / "plain", tiny_manifest(images, tmp_path / "o")),
        local_settings(),
    )
    assert plan.renders[0].id not in {r.id for r in plain.renders}  # the mask is in the id


def test_a_broken_mask_fails_its_render_and_only_it(tmp_path, images, weights_file, shots):
    content = [
        {"uri": str(images["tubingen"]), "mask": str(shots / "broken.png")},
        str(images["wave"]),
    ]
    _, summary, _ = render(tmp_path, images, weights_file, content)
    by_content = {r.content.rsplit("/", 1)[-1]: r for r in summary.renders}
    assert by_content["wave.png"].status == "done"
    failed = by_content["tubingen.png"]
    assert failed.status == "failed" and failed.error.startswith("mask ")
    assert "broken.png" in failed.error


def test_a_palette_pulls_colours_but_not_protected_pixels(tmp_path, images, weights_file, shots):
    from workers.engine.color import hex_rgb, pull_to_palette, rgb_to_yiq

    palette = {"colors": ["#D2001E", "#FFD200"], "strength": 0.8}  # a red and a yellow
    content = [{"uri": str(images["tubingen"]), "mask": str(shots / "mask.png")}]
    plan, summary, renderer = render(tmp_path, images, weights_file, content, palette=palette)
    out = Image.open(tmp_path / "out" / summary.renders[0].key)
    photo = renderer.content_at_size(plan.renders[0])
    assert diff(out, photo, (0, 0, 17, out.height)) == 0  # protected pixels untouched
    meta = embedded_metadata((tmp_path / "out" / summary.renders[0].key).read_bytes())
    assert meta["params"]["palette"] == {"colors": ["#d2001e", "#ffd200"], "strength": 0.8}

    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    colours = [hex_rgb(c) for c in palette["colors"]]
    pulled = pull_to_palette(image, colours, 0.8)
    target = rgb_to_yiq(torch.tensor(colours).T[:, :, None])[:, :, 0]

    def chroma_gap(img):
        iq = rgb_to_yiq(img)[1:].reshape(2, -1)
        return float(torch.cdist(iq.T, target[1:].T).min(1).values.mean())

    assert chroma_gap(pulled) < 0.5 * chroma_gap(image)
    luma = lambda img: rgb_to_yiq(img)[0]  # noqa: E731
    assert float((luma(pulled) - luma(image)).abs().mean()) < 0.02  # texture kept
    assert torch.equal(pull_to_palette(image, colours, 0.0), image)
    assert dataclasses.is_dataclass(plan.renders[0]) and json.dumps(meta["params"])
