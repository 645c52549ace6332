"""`stylebatch run` as a user meets it, rendering on the CPU: outputs, summary and contact sheet,
then skips on a rerun; untrained weights announced; a failed render listed while the others
finish; an interrupted run that keeps only whole outputs and resumes. (What needs no render:
tests/unit/test_cli.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from common.expand import plan_job
from common.imageio import embedded_metadata
from tests.support.commands import run_cli
from tests.support.manifests import local_settings, tiny_manifest, write_manifest
from tests.support.paths import ROOT

pytest.importorskip("torch")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"STYLEBATCH_DEVICE": "cpu"}, cwd=cwd)


def test_run_renders_outputs_summary_and_sheet_then_skips(tmp_path, images, weights_file):
    out = tmp_path / "out"
    path = write_manifest(tmp_path, tiny_manifest(images, out))
    result = cli("run", str(path), "--weights", str(weights_file))
    assert result.returncode == 0, result.stderr
    assert "done 2, skipped 0" in result.stdout
    outputs = sorted(out.glob("tubingen/*.png"))
    assert [p.name for p in outputs] == ["starry-48.png", "wave-48.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["done"] == 2
    plan = plan_job(path, local_settings(), str(weights_file))
    assert {r["id"] for r in summary["renders"]} == {r.id for r in plan.renders}
    record = summary["renders"][0]
    assert record["status"] == "done" and record["seconds"] > 0 and record["error"] is None
    meta = embedded_metadata(outputs[0].read_bytes())
    assert meta["render_id"] in {r.id for r in plan.renders}
    assert meta["weights_id"].startswith("sha256:")
    with Image.open(outputs[0]) as img:
        assert max(img.size) == 48
    with Image.open(out / "contact_sheet.png") as sheet:  # header + 1 content, label + 2 styles
        assert sheet.size[0] > 3 * 256 and 2 * 256 < sheet.size[1] < 3 * 256 + 100

    mtimes = [p.stat().st_mtime_ns for p in outputs]
    again = cli("run", str(path), "--weights", str(weights_file))
    assert again.returncode == 0, again.stderr
    assert "done 0, skipped 2" in again.stdout
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes


def test_random_weights_are_announced_and_recorded(tmp_path, images):
    out = tmp_path / "out"
    data = tiny_manifest(images, out)
    data["styles"] = data["styles"][:1]
    result = cli("run", str(write_manifest(tmp_path, data)), "--weights", "random")
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED random VGG19 weights" in result.stdout
    meta = embedded_metadata(next(out.rglob("starry-48.png")).read_bytes())
    assert meta["weights"] == meta["weights_id"] == "random:0"


def test_failed_render_is_listed_and_others_finish(tmp_path, images, weights_file):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Image.open(images["shipwreck"]).tobytes()[:500])  # not an image file
    data = tiny_manifest(images, tmp_path / "out")
    data["content"].append(str(broken))
    result = cli("run", str(write_manifest(tmp_path, data)), "--weights", str(weights_file))
    assert result.returncode == 1
    assert "broken.jpg: not a recognised image format" in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"] == {"pending": 0, "done": 2, "skipped": 0, "failed": 2, "cancelled": 0}


def test_interrupted_run_keeps_whole_outputs_and_resumes(tmp_path, images, weights_file):
    from workers.local import run_local

    out = tmp_path / "out"
    settings = local_settings()
    plan = plan_job(
        write_manifest(tmp_path, tiny_manifest(images, out)), settings, str(weights_file)
    )

    def ctrl_c_in_second_scale(scale, scales, iteration, iterations):
        if scale == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_local(plan, settings, "cpu", on_step=ctrl_c_in_second_scale)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [f"_jobs/{plan.job_id}/summary.json", "summary.json"]  # no partial outputs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["pending"] == 2 and summary["finished"]

    resumed = run_local(plan, settings, "cpu")
    assert resumed.counts()["done"] == 2
    again = run_local(plan, settings, "cpu")
    assert again.counts()["skipped"] == 2 and (out / "contact_sheet.png").is_file()
    assert (out / "contact_sheet.png").is_file()
