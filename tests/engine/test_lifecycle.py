"""Inputs known by their content, and records that last, on local files: a replaced input is a
new render (and an unchanged one is not), and a rerun keeps what the first run measured. On S3,
a worker that saw the old picture renders the new one: tests/integration/test_replaced_inputs.py."""

from __future__ import annotations

import json
import shutil

import pytest

from common.expand import plan_job
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

pytest.importorskip("torch")


def test_a_replaced_local_file_is_a_new_render_and_the_rest_are_not(tmp_path, images):
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("a", "b"):
        shutil.copy(images["tubingen"], shots / f"{name}.png")
    data = tiny_manifest(images, tmp_path / "out")
    data["content"] = [str(shots / "a.png"), str(shots / "b.png")]
    path = write_manifest(tmp_path, data)
    first = plan_job(path, local_settings())
    shutil.copy(images["wave"], shots / "b.png")
    second = plan_job(path, local_settings())
    kept = {r.id for r in first.renders} & {r.id for r in second.renders}
    assert {r.content for r in first.renders if r.id in kept} == {str(shots / "a.png")}
    assert len(kept) == 2 and len(second.renders) == 4
    identity = second.renders[-1].identities[str(shots / "b.png")]
    assert identity.startswith("sha256:") and len(identity) == len("sha256:") + 32


def test_a_rerun_keeps_what_the_first_run_measured(tmp_path, images, weights_file):
    from workers.local import run_local

    out = tmp_path / "out"
    path = write_manifest(tmp_path, tiny_manifest(images, out))
    settings = local_settings()
    plan = plan_job(path, settings, str(weights_file))
    first = run_local(plan, settings, "cpu")
    measured = {r.id: (r.seconds, r.losses, r.weights_id) for r in first.renders}
    assert all(s and s > 0 and losses for s, losses, _ in measured.values())

    again = run_local(plan_job(path, settings, str(weights_file)), settings, "cpu")
    assert {r.status for r in again.renders} == {"skipped"}
    assert {r.id: (r.seconds, r.losses, r.weights_id) for r in again.renders} == measured
    assert {r.rendered_by for r in again.renders} == {plan.job_id}
    kept = json.loads((out / "_jobs" / plan.job_id / "summary.json").read_text())
    assert [r["seconds"] for r in kept["renders"]] == [r.seconds for r in first.renders]
    assert (out / "_jobs" / plan.job_id / "contact_sheet.png").is_file()
    assert json.loads((out / "summary.json").read_text())["job_id"] == plan.job_id  # latest


def test_cost_per_render_and_per_job_in_the_summary_and_a_csv(tmp_path, images, weights_file):
    import csv

    from workers.local import run_local

    out = tmp_path / "out"
    path = write_manifest(tmp_path, tiny_manifest(images, out))
    plan = plan_job(path, local_settings(), str(weights_file))
    summary = run_local(plan, local_settings(), "cpu")
    # tubingen at 48 px is 48 x 36; the pyramid is 32 then 48, 8 iterations each
    per_render = 8 * 48 * 36 * (32 / 48) ** 2 + 8 * 48 * 36
    cost = json.loads((out / "summary.json").read_text())["cost"]
    assert cost["outputs"] == 2 and cost["pixel_iterations"] == pytest.approx(2 * per_render)
    assert cost == json.loads(json.dumps(summary.cost()))
    assert list(cost["device_seconds"]) == ["cpu"] and cost["device_seconds"]["cpu"] > 0
    rows = list(csv.DictReader((out / "_jobs" / plan.job_id / "cost.csv").open()))
    assert len(rows) == 2 and {r["device"] for r in rows} == {"cpu"}
    assert sum(float(r["device_seconds"]) for r in rows) == pytest.approx(
        cost["device_seconds"]["cpu"], abs=0.01
    )
    assert sum(float(r["pixel_iterations"]) for r in rows) == pytest.approx(2 * per_render, abs=1)

    run_local(plan_job(path, local_settings(), str(weights_file)), local_settings(), "cpu")
    again = list(csv.DictReader((out / "_jobs" / plan.job_id / "cost.csv").open()))
    assert [(r["status"], r["device_seconds"], r["outputs"]) for r in again] == [
        ("skipped", "0", "0")
    ] * 2  # a rerun that renders nothing costs nothing
