"""A replaced input on a real S3 server (SeaweedFS): a worker that saw the old picture renders
the new one, only the replaced input is a new render, and a stale plan never gets the newer
object."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from common.errors import InputError
from common.expand import plan_job
from common.settings import Settings
from common.storage import open_storage, s3_client
from tests.support.manifests import tiny_manifest, write_manifest
from tests.support.pictures import distance
from tests.support.services import ACCESS_KEY, SECRET_KEY

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
