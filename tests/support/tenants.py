"""Two teams on one fleet (issue 26), as the tenancy tests set them up: objects and local
folders of both teams and of neither, the teams' settings, and the fleet's settings around
them for the web front (tests/integration/test_tenants.py, tests/deploy/test_tenants_browser.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from common.settings import Settings
from common.storage import s3_client
from tests.support.services import ACCESS_KEY, SECRET_KEY
from tests.support.web import GENEROUS, TOKENS

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x02\x00\x00\x00"
    b"\x90\x91h6\x00\x00\x00\x19IDATx\x9cc\xfc\xcf\xc0P\x0f\x0b\x18\x18\x18\x18F\x85\x80\x01"
    b"\x00\x8c\x9f\x01\x1fF<\x1b\xa1\x00\x00\x00\x00IEND\xaeB`\x82"
)


@contextmanager
def two_teams(s3_server, root: Path) -> Iterator[dict]:
    """Two teams' objects in one bucket (and a bucket sharing team A's prefix as its name),
    another bucket, and local folders under ``root`` where team A's holds links into team
    B's; the fleet's S3 settings in the environment meanwhile. The same objects every time:
    the integration and deploy tiers each make one on the session's S3."""
    client = s3_server.client()
    for bucket in ("ins", "outs", "other-bucket", "ins-secrets"):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
    for key in (
        "team-a/one.png",
        "team-a/shots/two.png",
        "team-a-secrets/zz-private-a.png",
        "team-b/zz-private-b.png",
        "team-b/deep/zz-private-c.png",
        "top-zz-private.png",
    ):
        client.put_object(Bucket="ins", Key=key, Body=PNG)  # fmt: skip
    client.put_object(Bucket="other-bucket", Key="zz-private-d.png", Body=PNG)
    client.put_object(Bucket="ins-secrets", Key="team-a/zz-private-e.png", Body=PNG)
    a, b = root / "team-a", root / "team-b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    (a / "one.png").write_bytes(PNG)
    (a / "sub" / "two.png").write_bytes(PNG)
    (b / "zz-private-f.png").write_bytes(PNG)
    (a / "link-to-b").symlink_to(b)  # a folder link out
    (a / "file-to-b.png").symlink_to(b / "zz-private-f.png")  # a file link out
    (a / "loop").symlink_to(a / "loop")
    (a / "inside.png").symlink_to(a / "one.png")  # a link that stays inside: kept
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "STYLEBATCH_S3_ENDPOINT": s3_server.endpoint,
    }
    with mock.patch.dict(os.environ, env):
        s3_client.cache_clear()
        fleet = Settings.from_env()
        yield {
            "root": root,
            "a": a,
            "b": b,
            "team": Settings(
                **{
                    **fleet.__dict__,
                    "allowed_inputs": ("s3://ins/team-a", str(a)),
                    "allowed_outputs": ("s3://outs/team-a",),
                    "weights": "random",
                }
            ),
        }
        s3_client.cache_clear()


ALPHA_HOOK, BETA_HOOK = "alpha-webhook-secret-0123456789", "beta-webhook-secret-0123456789"


def teams_of(world) -> str:
    return json.dumps(
        {
            name: {
                "token_sha256": hashlib.sha256(TOKENS[name].encode()).hexdigest(),
                "allowed_inputs": [f"s3://ins/{folder}", str(world[key])],
                "allowed_outputs": [f"s3://outs/{folder}"],
                "webhook_secret": hook,
            }
            for name, folder, key, hook in (
                ("alpha", "team-a", "a", ALPHA_HOOK),
                ("beta", "team-b", "b", BETA_HOOK),
            )
        }
    )


def fleet_settings(world, redis_url: str, **more) -> Settings:
    return dataclasses.replace(
        world["team"],
        redis_url=redis_url,
        allowed_inputs=("s3://ins", str(world["root"])),
        allowed_outputs=("s3://outs",),
        web_teams=teams_of(world),
        web_thumbnails=str(world["root"] / "thumbnails"),
        webhook_allowed=("https://hooks.example/",),
        **{**GENEROUS, **more},
    )
