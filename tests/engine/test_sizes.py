"""Exact frames rendered at their size, cover-cropped around the detail of the shot (the sizes'
parsing and arithmetic: tests/unit/test_sizes.py)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from common.expand import plan_job
from tests.support.manifests import local_settings, tiny_manifest, write_manifest


def test_exact_frames_render_at_their_size_around_the_focus(tmp_path, images, weights_file):
    from workers.images import detail_centre
    from workers.local import run_local

    shot = Image.new("RGB", (120, 80), (230, 230, 230))
    ImageDraw.Draw(shot).rectangle([84, 20, 110, 60], fill=(200, 30, 30))  # product at the right
    shot.save(tmp_path / "shot.png")
    x, y = detail_centre(shot)
    assert x > 0.6 and 0.4 < y < 0.6  # the detail is where the product is
    data = tiny_manifest(images, tmp_path / "out", sizes=["32x48", "48x24", 40])
    data["content"] = [str(tmp_path / "shot.png")]
    data["styles"] = data["styles"][:1]
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), str(weights_file))
    summary = run_local(plan, local_settings(), "cpu")
    assert {r.status for r in summary.renders} == {"done"}
    dims = {r.size: Image.open(tmp_path / "out" / r.key).size for r in summary.renders}
    assert dims == {"32x48": (32, 48), "48x24": (48, 24), 40: (40, 27)}
    portrait = Image.open(
        tmp_path / "out" / next(r.key for r in summary.renders if r.size == "32x48")
    )
    left, right = portrait.crop((0, 0, 16, 48)), portrait.crop((16, 0, 32, 48))

    def red(im: Image.Image) -> int:
        return sum(r - g for r, g, _ in (im.getpixel((x, y)) for x in range(16) for y in range(48)))

    assert red(right) > red(left)  # the crop followed the product to the right
