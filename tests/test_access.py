"""What a manifest may read and write: prefixes matched at boundaries, outputs confined to the
allowed list and kept off the fleet's weights, schedules, code and configuration, at validate
and submit (the command line) and in every write (storage)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from common.access import OutputRefused, check_allowed, check_output, under
from common.errors import InputError
from common.settings import Settings
from common.storage import open_storage
from common.uris import Location
from tests.conftest import ROOT, run_cli, tiny_manifest, write_manifest

FLEET = Settings(
    weights="s3://models/vgg19-imagenet.pth",
    schedules="s3://manifests/schedules/",
    allowed_outputs=("s3://team-a", "s3://shared/team-a/"),
)


@pytest.mark.parametrize(
    ("target", "prefix", "inside"),
    [
        ("s3://team-a/x.png", "s3://team-a", True),
        ("s3://team-a-secrets/x.png", "s3://team-a", False),
        ("s3://team-a/shots/x.png", "s3://team-a/shots", True),
        ("s3://team-a/shots-old/x.png", "s3://team-a/shots", False),
        ("s3://team-a/shots", "s3://team-a/shots/", True),
        ("s3://anything/x.png", "s3://", True),
        ("/data/in/x.png", "/data/in", True),
        ("/data/inbox/x.png", "/data/in", False),
        ("/data/in/../secret/x.png", "/data/in", False),
        ("/data/in/x.png", "s3://", False),
    ],
)
def test_prefixes_match_at_boundaries(target, prefix, inside):
    assert under(target, prefix) is inside


def test_symlinks_are_resolved_before_matching(tmp_path):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "secret")
    assert not under(str(tmp_path / "allowed" / "link" / "x.png"), str(tmp_path / "allowed"))


def test_inputs_in_a_bucket_sharing_a_prefix_are_refused():
    settings = Settings(allowed_inputs=("s3://team-a",))
    check_allowed("s3://team-a/shots/x.png", settings)
    with pytest.raises(InputError, match="STYLEBATCH_ALLOWED_INPUTS=s3://team-a"):
        check_allowed("s3://team-a-secrets/x.png", settings)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("s3://models/vgg19-imagenet.pth", "the fleet's weights (STYLEBATCH_WEIGHTS)"),
        ("s3://models", "the fleet's weights"),  # a location holding them
        ("s3://manifests/schedules/daily.yaml", "STYLEBATCH_SCHEDULES"),
        (site.getsitepackages()[0] + "/evil.pth", "the fleet's code"),
        (str(ROOT / "common" / "x.py"), "the fleet's code"),
        (sys.prefix, "the fleet's code"),
        ("/etc/cron.d/x", "the system's programs"),
        ("s3://team-a-secrets/x.png", "STYLEBATCH_ALLOWED_OUTPUTS=s3://team-a,s3://shared/team-a/"),
        ("s3://shared/team-b/x.png", "STYLEBATCH_ALLOWED_OUTPUTS"),
        ("/tmp/stylebatch-out/x.png", "STYLEBATCH_ALLOWED_OUTPUTS"),  # local: not listed
    ],
)
def test_outputs_refused(uri, fragment):
    with pytest.raises(OutputRefused) as info:
        check_output(uri, FLEET)
    assert fragment in str(info.value)


def test_outputs_allowed_and_the_protected_list_wins_over_the_allowed_one(tmp_path):
    check_output("s3://team-a/campaign/x.png", FLEET)
    check_output("s3://shared/team-a/x.png", FLEET)
    local = Settings(allowed_outputs=("/",))  # what `stylebatch run` uses
    check_output(str(tmp_path / "out" / "x.png"), local)
    for uri in (str(Path(site.getsitepackages()[0]) / "x.pth"), "/usr/lib/x"):
        with pytest.raises(OutputRefused, match="refused as an output"):
            check_output(uri, local)
    everywhere = Settings(weights="s3://models/w.pth", allowed_outputs=("s3://",))
    with pytest.raises(OutputRefused, match="weights"):
        check_output("s3://models/w.pth", everywhere)


def test_every_write_is_checked_again_in_storage(tmp_path):
    """A hand-made job record cannot get round validate and submit."""
    storage = open_storage(Location("file", str(tmp_path / "out")), Settings())
    with pytest.raises(OutputRefused, match="STYLEBATCH_ALLOWED_OUTPUTS=s3://"):
        storage.put("x.png", b"data", "image/png", {})
    assert not (tmp_path / "out").exists()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=120)


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("s3://stylebatch-models/fleet", "STYLEBATCH_WEIGHTS"),
        ("s3://stylebatch-manifests/schedules", "STYLEBATCH_SCHEDULES"),
        ("s3://team-a-secrets/out", "STYLEBATCH_ALLOWED_OUTPUTS"),
        (site.getsitepackages()[0], "the fleet's code"),
    ],
)
def test_validate_and_submit_refuse_before_anything_is_enqueued(
    tmp_path, images, location, fragment
):
    data = tiny_manifest(images, tmp_path / "out")
    data["output"]["location"] = location
    path = write_manifest(tmp_path, data)
    env = {
        "STYLEBATCH_WEIGHTS": "s3://stylebatch-models/vgg19-imagenet.pth",
        "STYLEBATCH_SCHEDULES": "s3://stylebatch-manifests/schedules/",
        "STYLEBATCH_ALLOWED_OUTPUTS": "s3://team-a",
        "STYLEBATCH_ALLOWED_INPUTS": "/",
        "STYLEBATCH_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing may reach Redis
    }
    for command in (["validate", "--offline"], ["validate"], ["submit"]):
        result = cli(*command, str(path), "--weights", "random", env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert fragment in " ".join(result.stderr.split()), result.stderr
        assert "output.location" in result.stderr


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


@pytest.mark.parametrize(
    ("bucket", "prefix", "key", "fragment"),
    [
        ("models", "", "vgg19-imagenet.pth", "STYLEBATCH_WEIGHTS"),
        ("manifests", "schedules", "daily.yaml", "STYLEBATCH_SCHEDULES"),
        ("team-a-secrets", "x", "a.png", "STYLEBATCH_ALLOWED_OUTPUTS"),
    ],
)
def test_s3_writes_are_checked_before_any_request(bucket, prefix, key, fragment):
    storage = open_storage(Location("s3", bucket, prefix), FLEET)  # no server: never reached
    with pytest.raises(OutputRefused, match=fragment):
        storage.put(key, b"data", "image/png", {})
