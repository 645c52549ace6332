"""Style names sharing one painting (issue 26): rendered once with `stylebatch run`, written to
every key with the render id, counted once, and a lost copy written again on a rerun."""

from __future__ import annotations

import json


def test_copies_are_written_with_the_render_id_and_counted_once(tmp_path, images, weights_file):
    """Three style names sharing one painting: rendered once, written to all three keys (each
    carrying the render id), one render in the summary with two copies, its cost once and its
    files three times in cost.csv; a rerun rewrites a lost copy without rendering again."""
    import csv

    from PIL import Image

    from tests.support.commands import run_cli
    from tests.support.manifests import tiny_manifest, write_manifest

    out = tmp_path / "out"
    data = tiny_manifest(images, out)
    data["styles"] = [{"name": n, "image": str(images["wave"])} for n in ("sea", "surf", "swell")]
    path = write_manifest(tmp_path, data)
    done = run_cli("run", str(path), "--weights", str(weights_file), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "3 outputs: 2 are copies" in " ".join(done.stdout.split()), done.stdout
    keys = [out / "tubingen" / f"{n}-48.png" for n in ("sea", "surf", "swell")]
    ids = {Image.open(k).text["stylebatch"] for k in keys}  # the embedded record, whole
    assert len({json.loads(i)["render_id"] for i in ids}) == 1
    assert len({k.read_bytes() for k in keys}) == 1
    summary = json.loads(next(out.glob("_jobs/*/summary.json")).read_text())
    assert len(summary["renders"]) == 1 and len(summary["renders"][0]["copies"]) == 2
    assert summary["cost"]["outputs"] == 3 and summary["outputs_planned"] == 3
    rows = list(csv.DictReader(next(out.glob("_jobs/*/cost.csv")).open()))
    assert len(rows) == 1 and rows[0]["outputs"] == "3" and float(rows[0]["device_seconds"]) > 0
    keys[2].unlink()  # a lost copy: the rerun skips the render and writes the copy again
    again = run_cli("run", str(path), "--weights", str(weights_file), "--device", "cpu")
    assert again.returncode == 0 and "skipped 1" in again.stdout, again.stdout
    assert keys[2].read_bytes() == keys[0].read_bytes()
