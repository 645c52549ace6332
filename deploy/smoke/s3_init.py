"""Object-store init for SeaweedFS: the tested stand-in for minio-init.

Production runs MinIO, and its init (`minio-init` in deploy/docker-compose.yml) is `mc admin`:
four buckets, then one user per component with the policy in deploy/minio/NAME.json. MinIO
cannot run where the tests run; SeaweedFS can. This script applies the same policy files,
unchanged, to a SeaweedFS server, and tests/integration/test_policies.py runs it and then
checks every allow and deny with each component's own keys. It needs Python 3, boto3 and
nothing else (no `weed` binary): `python3 s3_init.py`. Running it again changes nothing.

SeaweedFS must take IAM writes: `weed mini` or `weed s3` with -s3.iam.readOnly=false (the IAM
API is on the S3 port). A user gets exactly the given keys through SeaweedFS's CreateAccessKey
extension (AccessKeyId and SecretAccessKey sent with the request: alphanumeric keys of 4-128
characters, secrets of 8-128), and its policy file as its inline policy (PutUserPolicy).

Environment:
  S3_ENDPOINT          the S3 endpoint, e.g. http://seaweedfs:8333
  IAM_ENDPOINT         the IAM endpoint (default: S3_ENDPOINT, where SeaweedFS serves it)
  ADMIN_KEY, ADMIN_SECRET   an admin identity (SeaweedFS: AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY
                       the server was started with)
  NAME_S3_KEY, NAME_S3_SECRET   for each policy file NAME.json: WORKER_S3_KEY/_SECRET,
                       BOOKKEEPING_S3_KEY/_SECRET, SCHEDULER_S3_KEY/_SECRET (as in compose)
  POLICY_DIR           the policy files (default: deploy/minio, beside this folder)
  S3_INIT_WAIT         seconds to wait for the endpoint to answer (default 0)
Exit status 1 with one line naming the setting when one is missing, wrong or unreachable.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

BUCKETS = ("stylebatch-inputs", "stylebatch-outputs", "stylebatch-manifests", "stylebatch-models")
UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError)


def fail(message: str) -> NoReturn:
    raise SystemExit(f"s3_init: {message}")


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        fail(f"{name} is not set")
    return value


def client(service: str, endpoint: str, key: str, secret: str):
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 2},
        connect_timeout=3,
        read_timeout=15,
    )
    return boto3.session.Session().client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=config,
    )


def code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "") or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def policies(folder: Path) -> dict[str, str]:
    """NAME -> the policy document of NAME.json, as written."""
    files = sorted(folder.glob("*.json"))
    if not files:
        fail(f"POLICY_DIR={folder}: no policy files (NAME.json)")
    found = {}
    for path in files:
        text = path.read_text()
        try:
            json.loads(text)
        except ValueError as exc:
            fail(f"{path}: not JSON ({exc})")
        found[path.stem] = text
    return found


def make_buckets(s3, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            s3.list_buckets()
            break
        except UNREACHABLE:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
        except ClientError as exc:
            fail(f"ADMIN_KEY/ADMIN_SECRET refused by S3_ENDPOINT: {code(exc)}")
    for bucket in BUCKETS:
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


def secret_matches(endpoint: str, key: str, secret: str) -> bool:
    try:
        client("s3", endpoint, key, secret).list_buckets()  # any user may; signed with both
    except ClientError as exc:
        if code(exc) in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
            return False
        raise
    return True


def create_key(iam, user: str, key: str, secret: str) -> None:
    """CreateAccessKey with the key and secret chosen here (SeaweedFS's extension)."""

    def choose(params, **_):
        params["body"].update(AccessKeyId=key, SecretAccessKey=secret)

    iam.meta.events.register("before-call.iam.CreateAccessKey", choose)
    try:
        made = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    except ClientError as exc:
        if code(exc) == "EntityAlreadyExists":
            fail(f"{user.upper()}_S3_KEY: access key {key} belongs to another user")
        raise
    finally:
        iam.meta.events.unregister("before-call.iam.CreateAccessKey", choose)
    if made != key:
        iam.delete_access_key(UserName=user, AccessKeyId=made)
        fail("IAM_ENDPOINT ignored the chosen access key: not SeaweedFS's IAM API?")


def apply_user(iam, s3_endpoint: str, user: str, policy: str) -> None:
    key = setting(f"{user.upper()}_S3_KEY")
    secret = setting(f"{user.upper()}_S3_SECRET")
    try:
        iam.create_user(UserName=user)
    except ClientError as exc:
        if code(exc) != "EntityAlreadyExists":
            raise
    keys = [k["AccessKeyId"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]]
    current = key in keys and secret_matches(s3_endpoint, key, secret)
    for old in keys:
        if old != key or not current:  # a rotated key or secret: only the given pair works
            iam.delete_access_key(UserName=user, AccessKeyId=old)
    if not current:
        create_key(iam, user, key, secret)
    name = f"stylebatch-{user}"
    for other in iam.list_user_policies(UserName=user)["PolicyNames"]:
        if other != name:
            iam.delete_user_policy(UserName=user, PolicyName=other)
    iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=policy)
    print(f"s3_init: user {user}: key {key}, policy {name} ({user}.json)")


def main() -> None:
    s3_endpoint = setting("S3_ENDPOINT")
    iam_endpoint = setting("IAM_ENDPOINT", s3_endpoint)
    admin = setting("ADMIN_KEY"), setting("ADMIN_SECRET")
    default = Path(__file__).resolve().parent.parent / "minio"
    documents = policies(Path(os.environ.get("POLICY_DIR") or default))
    for user in documents:  # every setting checked before anything is changed
        setting(f"{user.upper()}_S3_KEY"), setting(f"{user.upper()}_S3_SECRET")
    wait = float(os.environ.get("S3_INIT_WAIT") or 0)
    try:
        make_buckets(client("s3", s3_endpoint, *admin), wait)
        iam = client("iam", iam_endpoint, *admin)
        for user, policy in documents.items():
            apply_user(iam, s3_endpoint, user, policy)
    except UNREACHABLE as exc:
        url = str(exc.kwargs.get("endpoint_url", ""))
        iam_away = iam_endpoint != s3_endpoint and url.startswith(iam_endpoint)
        name = "IAM_ENDPOINT" if iam_away else "S3_ENDPOINT"
        fail(f"{name}={url or s3_endpoint} is unreachable ({exc})")
    except ClientError as exc:
        fail(f"{exc.operation_name} refused by the server: {code(exc)} ({exc})")


if __name__ == "__main__":
    sys.exit(main())
