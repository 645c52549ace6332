"""Least privilege against a real, policy-enforcing S3 server. SeaweedFS (with IAM writes on)
is set up by deploy/smoke/s3_init.py, the tested stand-in for compose's minio-init, from the
same policy files (deploy/minio/*.json); then every allow and every deny of the table
(tests/support/s3_policies.py) is checked with each component's own keys, and the project's own
storage code runs with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from common.errors import ConfigError, InputError, StorageError
from common.settings import Settings
from common.storage import S3Storage, s3_client
from common.uris import Location
from scheduler.preflight import check_location
from tests.support.s3_policies import (
    BUCKETS,
    CASES,
    INIT,
    INPUTS,
    MANIFESTS,
    MODELS,
    OUTPUTS,
    PLAIN,
    SEED,
    USERS,
    expected,
    listed,
    policy_files,
)
from tests.support.services import ACCESS_KEY, SECRET_KEY, S3Server, free_port, weed_binary
from tests.support.tools import WEED, require


def normal(policy: dict) -> dict:
    """A policy with every Action and Resource a list (SeaweedFS gives one item as a string)."""
    statements = [
        {k: listed(v) if k in ("Action", "Resource") else v for k, v in s.items()}
        for s in policy["Statement"]
    ]
    return {**policy, "Statement": statements}


def init_env(server: S3Server, **changes: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "S3_ENDPOINT": server.endpoint,
        "IAM_ENDPOINT": server.iam_endpoint,
        "ADMIN_KEY": ACCESS_KEY,
        "ADMIN_SECRET": SECRET_KEY,
    }
    for name, (key, secret) in USERS.items():
        env[f"{name.upper()}_S3_KEY"], env[f"{name.upper()}_S3_SECRET"] = key, secret
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def run_init(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(INIT)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """SeaweedFS enforcing policies, set up twice by s3_init.py (the second run must change
    nothing); yields the server and both runs."""
    require("weed", WEED, weed_binary())
    server = S3Server(tmp_path_factory.mktemp("seaweedfs-iam"), iam=True)
    try:
        runs = [run_init(init_env(server)) for _ in range(2)]
        yield server, runs
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(store):
    return store[0].client()


def refused(call, *args, **kwargs) -> bool:
    """True when S3 denies the call, False when it is done; any other error is raised."""
    try:
        call(*args, **kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error == "AccessDenied" or status == 403:
            return True
        raise
    return False


# -- the init script --------------------------------------------------------------------------


def test_init_runs_twice_and_applies_every_policy_file_unchanged(store):
    server, runs = store
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout == runs[1].stdout
    iam = server.client(service="iam")
    users = {u["UserName"] for u in iam.list_users()["Users"]}
    files = policy_files()
    assert set(files) == set(USERS) <= users
    for name, document in files.items():
        assert iam.list_user_policies(UserName=name)["PolicyNames"] == [f"stylebatch-{name}"]
        got = iam.get_user_policy(UserName=name, PolicyName=f"stylebatch-{name}")
        assert normal(got["PolicyDocument"]) == normal(document)  # as in the file
        keys = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
        assert [k["AccessKeyId"] for k in keys] == [USERS[name][0]]
    names = {b["Name"] for b in server.client().list_buckets()["Buckets"]}
    assert set(BUCKETS) <= names


def test_init_sets_a_changed_secret_and_drops_the_old_one(store):
    server, _ = store
    key, secret = USERS["bookkeeping"]
    rotated = run_init(init_env(server, BOOKKEEPING_S3_SECRET="rotated+secret/2"))
    try:
        assert rotated.returncode == 0, rotated.stderr
        assert server.client(key, "rotated+secret/2").list_objects_v2(Bucket=OUTPUTS)
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            server.client(key, secret).list_objects_v2(Bucket=OUTPUTS)
    finally:
        assert run_init(init_env(server)).returncode == 0
    assert server.client(key, secret).list_objects_v2(Bucket=OUTPUTS)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"WORKER_S3_SECRET": None}, "WORKER_S3_SECRET"),
        ({"SCHEDULER_S3_KEY": ""}, "SCHEDULER_S3_KEY"),
        ({"ADMIN_KEY": None}, "ADMIN_KEY"),
        ({"S3_ENDPOINT": f"http://127.0.0.1:{free_port()}", "IAM_ENDPOINT": None}, "S3_ENDPOINT"),
        ({"ADMIN_SECRET": "not-the-admin-secret"}, "ADMIN_KEY/ADMIN_SECRET"),
    ],
)
def test_init_fails_in_one_line_naming_the_setting(store, changes, named):
    run = run_init(init_env(store[0], **changes))
    assert run.returncode == 1
    assert named in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr


# -- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "action", "bucket", "key"),
    CASES,
    ids=[
        f"{c}-{a[3:]}-{b[11:]}{'' if k is None else '-' + k.rsplit('/', 1)[1]}-"
        f"{'allow' if expected(c, a, b, k) else 'deny'}"
        for c, a, b, k in CASES
    ],
)
def test_access(store, admin, component, action, bucket, key):
    server, _ = store
    s3 = server.client(*USERS[component])
    allow = expected(component, action, bucket, key)
    admin.put_object(Bucket=bucket, Key=key or PLAIN, Body=SEED)

    def content() -> bytes | None:
        try:
            return admin.get_object(Bucket=bucket, Key=key or PLAIN)["Body"].read()
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("NoSuchKey", "404")
            return None

    if action == "s3:ListBucket":
        got = {}
        assert refused(lambda: got.update(s3.list_objects_v2(Bucket=bucket))) is not allow
        if allow:
            assert PLAIN in {o["Key"] for o in got["Contents"]}
    elif action == "s3:GetBucketLocation":
        assert refused(s3.get_bucket_location, Bucket=bucket) is not allow
    elif action == "s3:GetObject":
        got = {}
        assert refused(lambda: got.update(s3.get_object(Bucket=bucket, Key=key))) is not allow
        if allow:
            assert got["Body"].read() == SEED
    elif action == "s3:PutObject":
        assert refused(s3.put_object, Bucket=bucket, Key=key, Body=b"new") is not allow
        assert content() == (b"new" if allow else SEED)
    else:
        assert refused(s3.delete_object, Bucket=bucket, Key=key) is not allow
        assert content() == (None if allow else SEED)


def test_wrong_secret_and_unknown_key_are_refused(store):
    server, _ = store
    for key, secret in USERS.values():
        assert server.client(key, secret).list_objects_v2(Bucket=OUTPUTS)
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            server.client(key, secret + "x").list_objects_v2(Bucket=OUTPUTS)
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        server.client("NOSUCHUSERKEY", "no-such-secret").list_objects_v2(Bucket=OUTPUTS)


def test_no_component_can_widen_its_own_access(store, admin):
    """Buckets, bucket policies and IAM are the admin's: each component is refused, and nothing
    changed."""
    server, _ = store
    iam_admin = server.client(service="iam")
    before = iam_admin.list_users()["Users"]
    anything = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*",'
    anything += '"Resource":"*"}]}'
    for name, (key, secret) in USERS.items():
        s3 = server.client(key, secret)
        assert refused(s3.create_bucket, Bucket=f"stylebatch-{name}-own")
        assert refused(s3.delete_bucket, Bucket=OUTPUTS)
        assert refused(s3.put_bucket_policy, Bucket=OUTPUTS, Policy=anything)
        iam = server.client(key, secret, service="iam")
        with pytest.raises(ClientError):
            iam.put_user_policy(UserName=name, PolicyName="more", PolicyDocument=anything)
        with pytest.raises(ClientError):
            iam.create_user(UserName=f"{name}-twin")
        assert iam_admin.list_user_policies(UserName=name)["PolicyNames"] == [f"stylebatch-{name}"]
    assert iam_admin.list_users()["Users"] == before
    names = {b["Name"] for b in admin.list_buckets()["Buckets"]}
    assert set(BUCKETS) <= names and not any(n.endswith("-own") for n in names)


# -- the project's own code, with each component's keys ---------------------------------------


@pytest.fixture
def as_component(store, monkeypatch):
    """Settings for the project's code, its boto3 clients signed with ``name``'s keys."""

    def use(name: str, **fields) -> Settings:
        key, secret = USERS[name]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        s3_client.cache_clear()  # cached per settings, not per credentials
        return Settings(s3_endpoint=store[0].endpoint, **fields)

    yield use
    s3_client.cache_clear()


def test_worker_writes_outputs_reads_weights_and_cannot_write_weights(
    as_component, admin, tmp_path
):
    from workers.weights import local_weights

    weights = f"s3://{MODELS}/vgg19-test.pth"
    admin.put_object(Bucket=MODELS, Key="vgg19-test.pth", Body=b"weights")
    settings = as_component("worker", cache_dir=tmp_path)
    outputs = S3Storage(Location("s3", OUTPUTS, "jobs/code"), settings)
    key = f"render-{tmp_path.name}.png"
    assert outputs.put_output(key, b"png", "image/png", {"render-id": "r1"}, "r1") is None
    assert outputs.put_output(key, b"png", "image/png", {"render-id": "r1"}, "r1") is not None
    assert admin.get_object(Bucket=OUTPUTS, Key=f"jobs/code/{key}")["Body"].read() == b"png"
    assert Path(local_weights(weights, settings)).read_bytes() == b"weights"
    for bucket, key in ((MODELS, "vgg19-test.pth"), (MANIFESTS, "schedules/a.yaml")):
        with pytest.raises(StorageError, match="access denied"):  # may not even HEAD them
            S3Storage(Location("s3", bucket, ""), settings).put(key, b"x", "", {})
    with pytest.raises(ConfigError, match=r"access denied.*cannot write outputs"):  # the PUT
        S3Storage(Location("s3", INPUTS, "content"), settings).put("a.png", b"x", "", {})
    assert admin.get_object(Bucket=MODELS, Key="vgg19-test.pth")["Body"].read() == b"weights"

    settings = as_component("bookkeeping", cache_dir=tmp_path / "other")
    with pytest.raises(InputError, match="access denied"):
        local_weights(weights, settings)


def test_scheduler_probes_outputs_but_cannot_write_one(as_component, admin):
    from scheduler.beat import ManifestSource

    admin.put_object(Bucket=MANIFESTS, Key="schedules/nightly.yaml", Body=b"name: nightly\n")
    location = Location("s3", OUTPUTS, "jobs/probed")
    settings = as_component("scheduler")
    assert check_location(location, settings) == []
    assert check_location(Location("s3", OUTPUTS, ""), settings) == []  # the probe at the root
    assert (
        f"s3://{MANIFESTS}/schedules/nightly.yaml"
        in ManifestSource(f"s3://{MANIFESTS}/schedules/", settings).scan()
    )
    with pytest.raises(ConfigError, match="access denied"):
        S3Storage(location, settings).put("out.png", b"png", "image/png", {})
    for other in ("worker", "bookkeeping"):  # they may write outputs, but not delete the probe
        (problem,) = check_location(location, as_component(other))
        assert "cannot write: " in problem.message and "access denied" in problem.message
    with pytest.raises(ClientError):
        ManifestSource(f"s3://{MANIFESTS}/schedules/", as_component("worker")).scan()


def test_bookkeeping_writes_outputs_and_reads_the_inputs_of_its_contact_sheets(as_component, admin):
    from common.storage import read_input

    settings = as_component("bookkeeping")
    outputs = S3Storage(Location("s3", OUTPUTS, "jobs/kept"), settings)
    outputs.put("summary.json", b"{}", "application/json", {"job": "j"})
    assert outputs.get("summary.json") == b"{}" and outputs.metadata("summary.json") == {"job": "j"}
    assert outputs.get("missing.json") is None
    admin.put_object(Bucket=INPUTS, Key="content/a.png", Body=b"in")
    # The contact sheet's thumbnails: read through the same call the sheet makes
    assert read_input(f"s3://{INPUTS}/content/a.png", settings) == b"in"
    with pytest.raises(StorageError, match="access denied"):  # may not even HEAD the bucket
        S3Storage(Location("s3", INPUTS, "content"), settings).put("a.png", b"x", "", {})
    assert admin.get_object(Bucket=INPUTS, Key="content/a.png")["Body"].read() == b"in"
