"""Content credentials (C2PA): outputs signed offline with a test certificate made here, read
back with c2pa's own reader from PNG, JPEG and WebP, and checked field by field."""

from __future__ import annotations

import dataclasses

import pytest

from common.expand import plan_job
from tests.support.certificates import make_signing_certificate
from tests.support.manifests import local_settings, tiny_manifest, write_manifest

pytest.importorskip("torch")
c2pa = pytest.importorskip("c2pa")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_signing_certificate(tmp_path_factory.mktemp("c2pa"))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_outputs_carry_credentials_read_back_by_c2pa(
    tmp_path, images, weights_file, certificate, fmt
):
    from workers.credentials import read
    from workers.local import run_local

    chain, key = certificate
    data = tiny_manifest(images, tmp_path / "out")
    data["styles"] = data["styles"][:1]
    data["output"] |= {"format": fmt, "credentials": True}
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), str(weights_file))
    settings = dataclasses.replace(local_settings(), c2pa_cert=str(chain), c2pa_key=str(key))
    summary = run_local(plan, settings, "cpu")
    [record], [render] = summary.renders, plan.renders
    assert record.status == "done", record.error
    manifest = read((tmp_path / "out" / record.key).read_bytes(), fmt)
    assert (
        manifest["validation_state"] == "Valid"
    )  # signed, and intact (the test CA is not trusted)
    [actions] = [a["data"]["actions"] for a in manifest["assertions"] if "actions" in a["label"]]
    assert actions[0]["action"] == "c2pa.created"
    assert actions[0]["digitalSourceType"].endswith("AlgorithmicMedia")
    ingredients = {i["title"]: i for i in manifest["ingredients"]}
    style_uri = render.style_images[0][0]
    assert set(ingredients) == {render.content, style_uri}
    assert ingredients[render.content]["relationship"] == "parentOf"
    for uri, ingredient in ingredients.items():
        assert ingredient["metadata"]["stylebatch:identity"] == render.identities[uri]
        assert ingredient["metadata"]["stylebatch:identity"].startswith("sha256:")
    [ours] = [a["data"] for a in manifest["assertions"] if a["label"] == "org.stylebatch.render"]
    assert ours["render_id"] == render.id and ours["job"] == plan.job_id
    assert ours["weights_id"] == record.weights_id and ours["engine"] == summary.engine


def test_credentials_are_off_by_default_and_refused_without_a_certificate(
    tmp_path, images, weights_file
):
    from scheduler.preflight import check_credentials
    from workers.credentials import read
    from workers.local import run_local

    data = tiny_manifest(images, tmp_path / "out")
    data["styles"] = data["styles"][:1]
    plan = plan_job(write_manifest(tmp_path, data), local_settings(), str(weights_file))
    [record] = run_local(plan, local_settings(), "cpu").renders
    with pytest.raises(c2pa.C2paError):
        read((tmp_path / "out" / record.key).read_bytes(), "png")
    assert check_credentials(None, local_settings()) == []
    [problem] = check_credentials(True, local_settings())
    assert problem.where == "output.credentials" and "STYLEBATCH_C2PA_CERT" in problem.message
    on = dataclasses.replace(local_settings(), c2pa_sign=True)
    assert check_credentials(None, on) and not check_credentials(False, on)
