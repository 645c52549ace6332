"""Expansion: one render per content x style x size, with ids that depend only on what
determines the pixels."""

from __future__ import annotations

from common.expand import plan_job
from common.params import PRESETS, RenderParams
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

SETTINGS = local_settings()  # local files may be read, as `stylebatch run` plans


def plan(tmp_path, data, name="m"):
    return plan_job(write_manifest(tmp_path / name, data), SETTINGS)


def test_cross_product_and_keys(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=[48, 64])
    data["content"].append(str(images["shipwreck"]))
    renders = plan(tmp_path, data).renders
    assert len(renders) == 2 * 2 * 2
    assert {r.key for r in renders} >= {"tubingen/starry-48.png", "shipwreck/wave-64.png"}
    assert len({r.id for r in renders}) == 8


def test_ids_are_stable_across_jobs_and_spellings(tmp_path, images):
    a = tiny_manifest(images, tmp_path / "out")
    b = tiny_manifest(images, tmp_path / "elsewhere")
    b["name"] = "another-job"
    b["output"]["key"] = "{style}/{content}-{id}.{ext}"
    # the same file, spelled relative to the manifest's folder
    b["content"] = [f"../{images['tubingen'].parent.name}/tubingen.png"]
    folder = images["tubingen"].parent.parent
    pa = plan_job(write_manifest(folder / "a", a), SETTINGS)
    pb = plan_job(write_manifest(folder / "b", b), SETTINGS)
    assert [r.id for r in pa.renders] == [r.id for r in pb.renders]
    assert pa.job_id != pb.job_id
    assert pb.renders[0].key == f"starry/tubingen-{pb.renders[0].id[:12]}.png"


def test_ids_change_with_what_changes_the_output(tmp_path, images):
    base = plan(tmp_path, tiny_manifest(images, tmp_path / "o"), "a").renders[0].id
    for change in ({"seed": 1}, {"style_weight": 2.0}, {"color": "luminance"}, {"sizes": [64]}):
        other = plan(tmp_path, tiny_manifest(images, tmp_path / "o", **change), "b").renders[0]
        assert other.id != base, change
    # everything that changes the output's bytes is the render's (tests/unit/test_identity.py)
    for i, change in enumerate(({"format": "jpeg"}, {"quality": 80}, {"credentials": True})):
        data = tiny_manifest(images, tmp_path / "o")
        data["output"] |= change
        assert plan(tmp_path, data, f"c{i}").renders[0].id != base, change
    data = tiny_manifest(images, tmp_path / "elsewhere")  # where it goes is not
    assert plan(tmp_path, data, "d").renders[0].id == base


def test_blend_weights_normalised_in_id(tmp_path, images):
    def with_weights(w1, w2):
        data = tiny_manifest(images, tmp_path / "o")
        data["styles"] = [
            {
                "name": "mix",
                "images": [
                    {"uri": str(images["starry_night"]), "weight": w1},
                    {"uri": str(images["wave"]), "weight": w2},
                ],
            }
        ]
        return plan(tmp_path, data, f"w{w1}-{w2}").renders[0].id

    assert with_weights(1, 3) == with_weights(0.5, 1.5)
    assert with_weights(1, 3) != with_weights(3, 1)


def test_duplicates_collapse(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "o")
    data["content"] = [str(images["tubingen"]), str(images["tubingen"])]
    assert len(plan(tmp_path, data).renders) == 2


def test_presets_fill_gaps_and_explicit_values_win(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "o")
    data["params"] = {"preset": "high", "sizes": [48], "lr": 0.05}
    data["styles"][1]["params"] = {"preset": "draft", "sizes": [64], "color": "histogram"}
    renders = {r.style: r for r in plan(tmp_path, data).renders}
    high, draft = renders["starry"].params, renders["wave"].params
    assert high["style_loss"] == PRESETS["high"]["style_loss"] and high["lr"] == 0.05
    assert draft["preset"] == "draft" and draft["lr"] == 0.05  # job-level explicit value kept
    assert draft["color"] == "histogram" and renders["wave"].size == 64
    assert draft["pyramid"] == PRESETS["draft"]["pyramid"]


def test_resolved_params_have_no_gaps():
    for preset in PRESETS:
        resolved = RenderParams(preset=preset).resolved()
        assert None not in resolved.values()
        assert "sizes" not in resolved


def test_weights_are_part_of_the_id(tmp_path, images):
    path = write_manifest(tmp_path / "m", tiny_manifest(images, tmp_path / "o"))
    a = plan_job(path, SETTINGS, weights="random:1").renders[0]
    b = plan_job(path, SETTINGS, weights="random:2").renders[0]
    c = plan_job(path, SETTINGS, weights="random").renders[0]
    assert a.id != b.id and c.weights == "random:0"
