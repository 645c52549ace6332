"""Inputs known by their content, and records that last: a replaced input is a new render (and
an unchanged one is not), a worker that saw the old picture renders the new one, a stale plan
never gets a newer object, and a rerun keeps what the first run measured."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from PIL import Image

from common.errors import InputError
from common.expand import plan_job
from common.settings import Settings
from common.storage import open_storage, s3_client
from tests.conftest import distance, local_settings, tiny_manifest, write_manifest
from tests.services import ACCESS_KEY, SECRET_KEY

pytest.importorskip("torch")


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3_client.cache_clear()
    client = s3_server.client()
    for bucket in ("life-in", "life-out"):
        client.create_bucket(Bucket=bucket)
    cache = tmp_path / "cache"
    yield (
        client,
        Settings(s3_endpoint=s3_server.endpoint, cache_dir=cache, allowed_inputs=("/", "s3://")),
    )
    s3_client.cache_clear()


def test_a_worker_that_saw_an_input_renders_its_replacement(s3, tmp_path, images, weights_file):
    from workers.render import Renderer

    client, settings = s3
    shot = "s3://life-in/shots/product.png"
    for name in ("product", "other"):
        client.upload_file(str(images["tubingen"]), "life-in", f"shots/{name}.png")
    data = tiny_manifest(images, tmp_path / "unused")
    data["output"]["location"] = "s3://life-out/campaign"
    data["content"] = [shot, "s3://life-in/shots/other.png"]
    data["styles"] = data["styles"][:1]
    path = write_manifest(tmp_path, data)
    first = plan_job(path, settings)
    storage = open_storage(first.location, settings)
    worker = Renderer(settings, str(weights_file), "cpu")  # one worker process, caches warm
    for render in first.renders:
        assert [o.status for o in worker.render_batch([render], storage, "j1", "png", 90)] == [
            "done"
        ]
    key = next(r.key for r in first.renders if r.content == shot)
    old_output = storage.get(key)

    client.upload_file(str(images["starry_night"]), "life-in", "shots/product.png")
    second = plan_job(path, settings)
    changed = [r for r in second.renders if r.id not in {f.id for f in first.renders}]
    assert [r.content for r in changed] == [shot]  # the other shot keeps its render id
    assert second.job_id != first.job_id  # so a resubmit is a new job, not "exists"
    etag = client.head_object(Bucket="life-in", Key="shots/product.png")["ETag"].strip('"')
    assert changed[0].identities[shot] == f"etag:{etag}"

    assert [o.status for o in worker.render_batch(changed, storage, "j2", "png", 90)] == ["done"]
    new_output = storage.get(key)
    new, old = Image.open(images["starry_night"]), Image.open(images["tubingen"])
    assert distance(new_output, new) < distance(new_output, old)  # the new picture, not a stale one
    assert distance(old_output, old) < distance(old_output, new)
    meta = storage.metadata(key)
    assert meta["content-id"] == f"etag:{etag}" and meta["render-id"] == changed[0].id

    # A plan made before the replacement never gets the newer object on a fresh worker.
    stale = next(r for r in first.renders if r.content == shot)
    fresh = Renderer(dataclasses.replace(settings, cache_dir=tmp_path / "fresh"), "random", "cpu")
    with pytest.raises(InputError, match=r"product.png changed after the job was planned"):
        fresh.content_at_size(stale)


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
