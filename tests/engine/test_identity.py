"""Turning content credentials on, or changing the quality, renders existing outputs again
instead of skipping them, end to end with `stylebatch run` (the render ids alone:
tests/unit/test_identity.py)."""

from __future__ import annotations

import pytest

from tests.support.commands import run_cli
from tests.support.manifests import tiny_manifest, write_manifest


def test_turning_credentials_on_or_changing_quality_renders_again(tmp_path, images, weights_file):
    """End to end with `stylebatch run`: unsigned, then signed, then another quality."""
    pytest.importorskip("torch")
    pytest.importorskip("c2pa")
    from tests.support.certificates import make_signing_certificate
    from workers.credentials import read

    folder = tmp_path / "ca"
    folder.mkdir()
    chain, key = make_signing_certificate(folder)
    out = tmp_path / "out"
    data = tiny_manifest(images, out)
    data["output"] |= {"format": "jpeg", "quality": 90}
    path = write_manifest(tmp_path, data)
    keys = ["tubingen/starry-48.jpg", "tubingen/wave-48.jpg"]

    def run(**env: str):
        env = {
            "STYLEBATCH_C2PA_SIGN": "0",
            "STYLEBATCH_C2PA_CERT": str(chain),
            "STYLEBATCH_C2PA_KEY": str(key),
            **env,
        }
        result = run_cli(
            "run", str(path), "--weights", str(weights_file), "--device", "cpu", env=env
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def signed(key: str) -> bool:
        try:
            return read((out / key).read_bytes(), "jpeg")["validation_state"] == "Valid"
        except Exception:  # c2pa.C2paError: no manifest in the file
            return False

    assert "done 2, skipped 0" in run()
    assert not any(signed(k) for k in keys)
    assert "done 0, skipped 2" in run()  # unchanged: skipped

    assert "done 2, skipped 0" in run(STYLEBATCH_C2PA_SIGN="1")  # was: skipped 2
    assert all(signed(k) for k in keys)
    assert "done 0, skipped 2" in run(STYLEBATCH_C2PA_SIGN="1")

    data["output"]["quality"] = 60
    write_manifest(tmp_path, data)
    assert "done 2, skipped 0" in run(STYLEBATCH_C2PA_SIGN="1")
    assert all(signed(k) for k in keys)
