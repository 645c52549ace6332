"""Channel sizes: long sides, exact WxH frames and named channels, cover-cropped around a focus
point, with key fields and work measured in real pixels (rendered at their size:
tests/engine/test_sizes.py)."""

from __future__ import annotations

import pytest

from common.errors import ManifestError
from common.expand import plan_job
from common.queue import task_work
from common.sizes import CHANNELS, cover_box, parse_size
from tests.support.manifests import local_settings, tiny_manifest, write_manifest


def test_sizes_parse_as_long_sides_frames_and_channels():
    assert parse_size(512).long == 512 and not parse_size(512).exact
    frame = parse_size("1200X628 ")
    assert (frame.width, frame.height, frame.long, frame.channel) == (1200, 628, 1200, "1200x628")
    story = parse_size("meta-story")
    assert (story.width, story.height, story.channel, story.pixels) == (
        1080,
        1920,
        "meta-story",
        1080 * 1920,
    )
    assert {"meta-feed-square", "iab-leaderboard", "google-display-landscape"} <= set(CHANNELS)
    for bad, message in [
        ("12x628", "outside 16..6144"),
        ("banner", "must be a long side"),
        (True, "not a size"),
        (9000, "outside"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_size(bad)


def test_cover_box_keeps_the_frame_aspect_and_the_focus_in_view():
    assert cover_box(400, 300, 100, 100, (0.5, 0.5)) == (50, 0, 350, 300)
    assert cover_box(400, 300, 100, 100, (0.0, 0.5)) == (0, 0, 300, 300)  # clamped at the edge
    assert cover_box(400, 300, 100, 100, (0.9, 0.5)) == (100, 0, 400, 300)
    left, top, right, bottom = cover_box(400, 300, 728, 90, (0.5, 0.2))
    assert right - left == 400 and abs((right - left) / (bottom - top) - 728 / 90) < 0.1
    assert (top + bottom) / 2 == pytest.approx(0.2 * 300, abs=1)  # centred 20 % down


def test_a_manifest_with_channel_sizes_expands_with_frame_keys(tmp_path, images):
    data = tiny_manifest(
        images, tmp_path / "out", sizes=["1080x1080", "meta-story", 300, "300x250"]
    )
    data["content"] = [{"uri": str(images["tubingen"]), "focus": [0.3, 0.6]}]
    data["output"]["key"] = "{content}/{channel}/{style}-{width}x{height}.{ext}"
    plan = plan_job(write_manifest(tmp_path, data), local_settings())
    keys = sorted(r.key for r in plan.renders if r.style == "starry")
    assert keys == [
        "tubingen/1080x1080/starry-1080x1080.png",
        "tubingen/300x250/starry-300x250.png",
        "tubingen/long300/starry-300x300.png",
        "tubingen/meta-story/starry-1080x1920.png",
    ]
    assert {r.focus for r in plan.renders} == {(0.3, 0.6)}
    moved = dict(data, content=[{"uri": str(images["tubingen"]), "focus": [0.7, 0.6]}])
    other = plan_job(write_manifest(tmp_path / "b", moved), local_settings())
    assert not {r.id for r in plan.renders} & {r.id for r in other.renders}  # focus is in the id


def test_bad_sizes_and_focus_are_named(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=["1080x1080", "1080X1080", "tiktok"])
    data["content"] = [{"uri": str(images["tubingen"]), "focus": [1.5, 0.5]}]
    with pytest.raises(ManifestError) as caught:
        plan_job(write_manifest(tmp_path, data), local_settings())
    text = str(caught.value)
    assert "params.sizes" in text and "must be a long side" in text
    assert "focus" in text and "within 0..1" in text


def test_work_counts_real_pixels():
    params = {"pyramid": {"start": 128, "ratio": 2.0, "iterations": 10}, "style_loss": "gram"}
    assert task_work("300x250", params, 1) < task_work(300, params, 1)
    assert task_work("728x90", params, 1) == pytest.approx(task_work(728, params, 1) * 90 / 728)
