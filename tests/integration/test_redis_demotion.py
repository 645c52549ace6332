"""A plain Redis URL whose primary is demoted under the client (a DNS name or VIP that moves) or
refuses writes for want of replicas: the job store's client waits and writes, against two real
Redis servers (Sentinel sets: tests/fleet/test_sentinel.py)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from common.redis_client import client
from common.settings import Settings
from tests.support.services import RedisServer
from tests.support.tools import REDIS, require


@pytest.fixture(autouse=True)
def redis_installed():
    require("redis-server", REDIS)


def test_a_plain_url_rides_out_readonly_and_noreplicas(tmp_path):
    """A primary demoted under a client (a DNS name or VIP that moves), or one refusing writes
    for want of replicas (min-replicas-to-write): the write waits and goes through."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = RedisServer(tmp_path / "one"), RedisServer(tmp_path / "two")
    try:
        r = client(Settings(redis_url=one.url()))
        r.set("k", "before")
        admin = redis.Redis(port=one.port)
        admin.replicaof("127.0.0.1", two.port)
        restore = threading.Timer(1.0, lambda: admin.replicaof("NO", "ONE"))
        restore.start()
        started = time.monotonic()
        r.set("k", "after")  # READONLY until the timer makes it a primary again
        assert time.monotonic() - started >= 0.8 and admin.get("k") == b"after"
        admin.config_set("min-replicas-to-write", 1)
        restore = threading.Timer(1.0, lambda: admin.config_set("min-replicas-to-write", 0))
        restore.start()
        started = time.monotonic()
        r.set("k", "again")  # NOREPLICAS until the timer lifts the rule
        assert time.monotonic() - started >= 0.8 and admin.get("k") == b"again"
    finally:
        one.stop()
        two.stop()
