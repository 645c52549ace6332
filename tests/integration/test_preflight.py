"""Inputs and preflight against a real S3 server: inputs found and identified by HEAD, by
listing their folder, and by listing what scattered folders share; a missing, an oversized and
a disallowed input, a missing or unwritable output, and weights, each named with its field."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from unittest import mock

import pytest

from common.expand import JobPlan, Render
from common.inputs import LIST_FROM, identify, weights_identity
from common.manifest import parse_manifest
from common.settings import Settings
from common.storage import s3_client
from common.uris import parse_location
from scheduler.preflight import preflight
from tests.support.services import ACCESS_KEY, SECRET_KEY

BUCKET = "preflight-in"


def plan(contents: list[str], output: str, weights: str = "random:0") -> JobPlan:
    manifest = parse_manifest(
        {
            "name": "pf",
            "output": {"location": output},
            "content": ["s3://x/y.png"],
            "styles": [{"name": "look", "image": f"s3://{BUCKET}/look.png"}],
        },
        "pf",
    )
    style = ((f"s3://{BUCKET}/look.png", 1.0),)
    renders = [
        Render(f"r{i}", uri, f"c{i}", "look", style, 64, {}, f"{i}.png", weights, {})
        for i, uri in enumerate(contents)
    ]
    location = parse_location(output, Path("/"))
    return JobPlan("pf", "pf", "pf", manifest, location, renders, weights)


@pytest.fixture(scope="module")
def s3(s3_server):
    client = s3_server.client()
    for bucket in (BUCKET, "preflight-out"):
        client.create_bucket(Bucket=bucket)
    keys = [f"folder/{i:03d}.png" for i in range(LIST_FROM + 5)]  # listed as one folder
    keys += [f"products/p{i:03d}/front.png" for i in range(LIST_FROM + 5)]  # scattered
    keys += ["few/a.png", "look.png"]  # HEADed
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 10)
    client.put_object(Bucket=BUCKET, Key="few/big.png", Body=b"x" * 5000)
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with mock.patch.dict(os.environ, env):
        yield Settings(s3_endpoint=s3_server.endpoint, max_input_bytes=1000), keys


def test_every_input_found_and_identified_however_it_is_looked_up(s3, s3_server):
    settings, keys = s3
    uris = [f"s3://{BUCKET}/{k}" for k in keys if k != "look.png"]
    identities, problems = identify(dict.fromkeys(uris, "content"), settings)
    assert problems == []
    client = s3_server.client()
    for uri in (uris[0], uris[LIST_FROM + 6], uris[-1]):  # listed folder, scattered, HEADed
        etag = client.head_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["ETag"]
        assert identities[uri] == "etag:" + etag.strip('"')
    assert preflight(plan(uris, "s3://preflight-out/job"), settings) == []


def test_every_problem_named_with_its_field(s3):
    settings, keys = s3
    uris = [f"s3://{BUCKET}/{k}" for k in keys if k != "look.png"]
    missing = [
        f"s3://{BUCKET}/folder/nope.png",
        f"s3://{BUCKET}/products/p999/front.png",
        f"s3://{BUCKET}/few/nope.png",
    ]
    inputs = [*uris, *missing, f"s3://{BUCKET}/few/big.png", "/etc/passwd"]
    weights = f"s3://{BUCKET}/models/vgg19.pth"
    bad = plan(inputs, "s3://preflight-outt/job", weights=weights)
    bad.problems = identify(dict.fromkeys(inputs, "content"), settings)[1]
    bad.problems.append(weights_identity(weights, settings)[1])
    problems = {str(p) for p in preflight(bad, settings)}
    assert problems == {
        "output.location: s3://preflight-outt/job: bucket 'preflight-outt' does not exist",
        *(f"content: {uri}: no such object" for uri in missing),
        f"content: s3://{BUCKET}/few/big.png: 5000 bytes exceeds the input limit of 1000 "
        "(STYLEBATCH_MAX_INPUT_BYTES)",
        "content: not among the inputs this worker may read (STYLEBATCH_ALLOWED_INPUTS=s3://)",
        f"weights: s3://{BUCKET}/models/vgg19.pth: no such object",
    }


def test_an_unwritable_output_and_a_local_folder(s3, tmp_path):
    settings, _ = s3
    look_only = [f"s3://{BUCKET}/few/a.png"]
    with mock.patch.dict(os.environ, {"AWS_SECRET_ACCESS_KEY": "wrong"}):
        s3_client.cache_clear()
        problems = [str(p) for p in preflight(plan(look_only, "s3://preflight-out/j"), settings)]
    s3_client.cache_clear()
    assert problems and problems[0].startswith("output.location: s3://preflight-out/j: cannot")
    local = dataclasses.replace(settings, allowed_outputs=("/",))  # as `stylebatch run`
    assert preflight(plan(look_only, str(tmp_path / "new" / "dir")), local) == []
    (tmp_path / "file").write_text("not a folder")
    blocked = preflight(plan(look_only, str(tmp_path / "file" / "out")), local)
    assert [p.where for p in blocked] == ["output.location"]
    refused = preflight(plan(look_only, str(tmp_path / "new" / "dir")), settings)
    assert [p.where for p in refused] == ["output.location"]
    assert "STYLEBATCH_ALLOWED_OUTPUTS" in refused[0].message
