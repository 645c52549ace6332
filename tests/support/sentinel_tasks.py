"""A tiny Celery task module for tests/fleet/test_sentinel.py: its app is ``make_app`` from the
environment's settings, so its worker reaches the broker and the result backend through Redis
Sentinel exactly as the fleet's workers do."""

from __future__ import annotations

import redis

from common.queue import make_app
from common.redis_client import client
from common.settings import Settings

DONE = "sentinel-test:done"  # the numbers of the tasks that ran
RUNS = "sentinel-test:runs"  # how many times any ran (a redelivery counts again)
TASK = "sentinel_test.record"

settings = Settings.from_env()
app = make_app(settings)
_redis: redis.Redis | None = None


@app.task(name=TASK)
def record(number: int) -> int:
    global _redis
    if _redis is None:
        _redis = client(settings)
    _redis.sadd(DONE, number)
    _redis.incr(RUNS)
    return number
