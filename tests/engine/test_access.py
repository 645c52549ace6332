"""What `stylebatch run` writes locally: every output, summary and contact sheet with the usual
file modes (the process's umask). Where a manifest may read and write: tests/unit/test_access.py."""

from __future__ import annotations

import os
import subprocess

from tests.support.commands import run_cli
from tests.support.manifests import tiny_manifest, write_manifest


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=120)


def test_run_writes_local_outputs_with_the_usual_file_modes(tmp_path, images, weights_file):
    out = tmp_path / "out"
    path = write_manifest(tmp_path, tiny_manifest(images, out))
    result = cli("run", str(path), "--weights", str(weights_file), "--device", "cpu", env={})
    assert result.returncode == 0, result.stderr
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 7  # two renders, summary.json and contact_sheet.png twice, cost.csv
    assert {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~mask}
