"""Everything that changes an output's bytes is in its render id: format, quality, whether it
is signed and by whom. So turning content credentials on, or changing the quality, renders
existing outputs again instead of skipping them as "already rendered" (end to end:
tests/engine/test_identity.py)."""

from __future__ import annotations

import dataclasses

from common.expand import plan_job, signer_identity
from tests.support.manifests import local_settings, tiny_manifest, write_manifest


def _ids(path, settings, weights="random") -> list[str]:
    return sorted(r.id for r in plan_job(path, settings, weights).renders)


def test_format_quality_and_signing_are_in_the_render_id(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    base = local_settings()
    path = write_manifest(tmp_path, data)
    plain = _ids(path, base)
    assert _ids(path, base) == plain  # deterministic
    ids = {"plain": plain}
    for name, change in {
        "quality": {"quality": 80},
        "format": {"format": "jpeg"},
        "signed": {"credentials": True},
    }.items():
        changed = dict(data, output={**data["output"], **change})
        ids[name] = _ids(write_manifest(tmp_path / name, changed), base)
    # STYLEBATCH_C2PA_SIGN=1 (manifest silent) signs, so it is the same render as credentials: true
    ids["env"] = _ids(path, dataclasses.replace(base, c2pa_sign=True))
    assert ids["env"] == ids["signed"]
    unique = {tuple(v) for k, v in ids.items() if k != "env"}
    assert len(unique) == 4
    # credentials: false overrides the deployment's default: the unsigned render
    off = dict(data, output={**data["output"], "credentials": False})
    on = dataclasses.replace(base, c2pa_sign=True)
    assert _ids(write_manifest(tmp_path / "off", off), on) == plain


def test_the_signer_is_in_the_render_id(tmp_path, images):
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"first certificate")
    path = write_manifest(tmp_path, tiny_manifest(images, tmp_path / "out"))
    signing = dataclasses.replace(local_settings(), c2pa_sign=True, c2pa_cert=str(chain))
    first = _ids(path, signing)
    assert signer_identity(signing).startswith("es256:sha256:")
    assert _ids(path, dataclasses.replace(signing, c2pa_alg="ps256")) != first
    chain.write_bytes(b"rotated certificate")  # same path, new chain: a new signer
    assert _ids(path, signing) != first
    # unreadable here (it lives on the workers): its path names the signer
    away = dataclasses.replace(signing, c2pa_cert=str(tmp_path / "missing.pem"))
    assert signer_identity(away) == f"es256:path:{tmp_path / 'missing.pem'}"
    assert _ids(path, away) not in (first, _ids(path, signing))
