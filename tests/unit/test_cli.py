"""The command line as a user meets it, short of rendering: exit codes and messages of validate
and run, and the worker unit's exit status (rendering runs: tests/engine/test_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.commands import run_cli
from tests.support.manifests import tiny_manifest, write_manifest
from tests.support.paths import ROOT

pytest.importorskip("torch")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"STYLEBATCH_DEVICE": "cpu"}, cwd=cwd)


def test_validate_ok():
    result = cli("validate", "examples/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "2 renders: 1 content image(s) x 2 style(s)" in result.stdout


def test_bad_manifest_exits_2_and_writes_nothing(tmp_path, images):
    out = tmp_path / "out"
    data = tiny_manifest(images, out, sizes=[99999])
    data["styles"][0]["image"] = str(tmp_path / "missing.png")
    path = write_manifest(tmp_path, data)
    for command in ("validate", "run"):
        result = cli(command, str(path))
        assert result.returncode == 2, result.stdout
        assert "params.sizes[0]" in result.stderr
        assert "styles[0].image: file not found" in result.stderr
    assert not out.exists()


def test_cli_never_imports_torch():
    code = (
        "import sys, scheduler.cli, common.expand, common.contact_sheet; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_unloadable_weights_fail_the_run_up_front(tmp_path, images):
    out = tmp_path / "out"
    path = write_manifest(tmp_path, tiny_manifest(images, out))
    result = cli("run", str(path), "--weights", str(tmp_path / "missing.pth"))
    assert result.returncode == 1
    assert "weights file not found" in result.stderr and "missing.pth" in result.stderr
    assert not any(out.rglob("*.png"))


def test_a_sick_render_worker_stops_the_unit_with_status_3():
    """`stylebatch worker`: when one process exits 3 (its device failed), the others get a
    warm SIGTERM and the whole unit exits 3, so an orchestrator restarts it."""
    import time

    from workers.launch import run_workers

    sick = ([sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)"], {})
    healthy = ([sys.executable, "-c", "import time; time.sleep(60)"], {})
    started = time.monotonic()
    assert run_workers([sick, healthy]) == 3
    assert time.monotonic() - started < 20
    assert run_workers([([sys.executable, "-c", "pass"], {})]) == 0


def test_a_worker_that_dies_unasked_stops_the_unit_with_its_status():
    """One process of `stylebatch worker` gone (kombu gave up on Redis, the kernel killed it):
    the others stop too, so the orchestrator restarts the whole unit, not a unit short."""
    import time

    from workers.launch import run_workers

    died = ([sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(1)"], {})
    healthy = ([sys.executable, "-c", "import time; time.sleep(60)"], {})
    started = time.monotonic()
    assert run_workers([died, healthy]) == 1
    assert time.monotonic() - started < 20
    # killed by a signal (the kernel's OOM killer): 128 + 9, never 0, alone or not
    killed = ([sys.executable, "-c", "import os, time; time.sleep(0.3); os.kill(os.getpid(), 9)"],
              {})  # fmt: skip
    assert run_workers([killed, healthy]) == 137
    assert run_workers([killed]) == 137


def test_validate_tells_a_missing_environment_from_a_bad_manifest(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["content"] = ["s3://shots/product.png"]
    data["styles"] = [{"name": "starry", "image": "s3://shots/starry.png"}]
    path = write_manifest(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STYLEBATCH_S3"))}
    env |= {"COLUMNS": "200", "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/x"}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "scheduler.cli", *a],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    unchecked = run("validate", str(path))
    assert unchecked.returncode == 3, unchecked.stdout + unchecked.stderr
    assert (
        "cannot check s3 inputs: no credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
        "or STYLEBATCH_S3_ENDPOINT)" in " ".join(unchecked.stderr.split())
    )
    assert "invalid manifest" not in unchecked.stderr
    offline = run("validate", "--offline", str(path))
    assert offline.returncode == 0, offline.stderr
    assert "well-formed" in offline.stdout
    data["params"]["sizes"] = [0]  # a bad manifest is still one, with or without credentials
    bad = run("validate", str(write_manifest(tmp_path, data)))
    assert bad.returncode == 2 and "params.sizes" in bad.stderr
