"""Fixtures every tier may use: tiny input images and small deterministic VGG19 weights made
here; and, for the tiers above unit, the session's Redis and SeaweedFS (skipped where they are
not installed, failed in CI: tests/support/tools.py), a Redis database of a test's own, and
the one way to start a local fleet. The tiers' own conftest.py files mark what they collect."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.paths import EXAMPLES
from tests.support.tools import REDIS, WEED, require


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """64 px copies of the demo images (content and styles)."""
    out = tmp_path_factory.mktemp("images")
    paths = {}
    for name in ("tubingen", "starry_night", "wave", "shipwreck"):
        img = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        img.thumbnail((64, 64), Image.Resampling.LANCZOS)
        paths[name] = out / f"{name}.png"
        img.save(paths[name])
    return paths


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """VGG19 weights made by the tests: deterministic He-initialised, seed 1234."""
    torch = pytest.importorskip("torch")
    from workers.engine import random_state_dict

    path = tmp_path_factory.mktemp("weights") / "vgg19-test.pth"
    torch.save(random_state_dict(1234), path)
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.support.services import RedisServer

    require("redis-server", REDIS)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def new_redis_db(redis_server) -> Callable[[], str]:
    """Hands out the session Redis's databases, one a call, each emptied first: its URL. For
    fixtures of any scope (a module's fleet takes one); db 0 is left to bare ``url()``."""
    import redis

    numbers = itertools.count(1)

    def take() -> str:
        db = next(numbers)
        if db > 255:
            raise RuntimeError("the session's Redis has 256 databases, all taken")
        url = redis_server.url(db)
        redis.Redis.from_url(url).flushdb()
        return url

    return take


@pytest.fixture
def redis_db(new_redis_db) -> str:
    """A Redis database of this test's own, empty: its URL."""
    return new_redis_db()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.support.services import S3Server, weed_binary

    require("weed", WEED, weed_binary())
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet_factory(request, tmp_path_factory, weights_file, images) -> Iterator[Callable]:
    """Start local fleets for this module (tests/support/fleet.py): ``fleet_factory(workers,
    env=..., redis=..., s3=...)``. Each has a database of its own on the session's Redis, or
    database 0 of the ``redis`` given (a server of the test's own), the session's S3 or the
    ``s3`` given, with the test images uploaded; every fleet is stopped when the module ends."""
    from tests.support.fleet import start_fleet, upload_inputs

    made = []

    def make(workers=(), *, env=None, redis=None, s3=None):
        if redis is None:
            redis = request.getfixturevalue("redis_server")
            url = request.getfixturevalue("new_redis_db")()
        else:
            url = redis.url(0)
        s3 = s3 or request.getfixturevalue("s3_server")
        upload_inputs(s3, images)
        folder = tmp_path_factory.mktemp("fleet")
        made.append(start_fleet(folder, redis, s3, weights_file, url, workers, env))
        return made[-1]

    yield make
    for fleet in made:
        fleet.stop()
