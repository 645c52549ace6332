"""A service with a broken setting stops at start, with one line naming the setting and exit
status 4, instead of a reconnect loop or a traceback (common/startup.py): each long-running
command against a real Redis with a password and a real SeaweedFS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support.commands import run_cli
from tests.support.paths import ROOT
from tests.support.services import ACCESS_KEY, SECRET_KEY, RedisServer, free_port, wait_for
from tests.support.tools import REDIS, require

PASSWORD = "startup-pw-1"


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory):
    require("redis-server", REDIS)
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    yield server
    server.stop()


def env(redis_with_password, s3_server, **over: str) -> dict[str, str]:
    return {
        "STYLEBATCH_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{redis_with_password.port}/0",
        "STYLEBATCH_S3_ENDPOINT": s3_server.endpoint,
        "STYLEBATCH_S3_ADDRESSING": "path",
        "STYLEBATCH_ALLOWED_OUTPUTS": "s3://outputs",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "STYLEBATCH_STARTUP_WAIT": "2",
        "STYLEBATCH_FLOWER_USER": "operator",
        "STYLEBATCH_FLOWER_PASSWORD": "flower-pw",
        **over,
    }


def refused(args: list[str], environment: dict[str, str], *named: str) -> float:
    started = time.monotonic()
    result = run_cli(*args, env=environment, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 4, (result.returncode, result.stdout[-500:], result.stderr[-500:])
    message = result.stderr.strip()
    assert message.startswith("cannot start: ") and len(message.splitlines()) <= 2, message
    assert all(n in message for n in named), (named, message)
    assert "Traceback" not in result.stderr + result.stdout
    return took


SERVICES = {
    "worker": (["worker", "--no-renders"], True),
    "beat": (["beat", "--schedules", "s3://outputs/schedules/"], True),
    "flower": (["flower", "--port", "0"], False),
    "metrics": (["metrics", "--port", "0"], False),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_wrong_redis_password_stops_every_service_at_start(
    service, redis_with_password, s3_server
):
    url = f"redis://:wrong@127.0.0.1:{redis_with_password.port}/0"
    environment = env(redis_with_password, s3_server, STYLEBATCH_REDIS_URL=url)
    took = refused(SERVICES[service][0], environment, "STYLEBATCH_REDIS_URL", "password")
    assert took < 20  # at once, not after the wait for an unreachable one
    assert "wrong" not in run_cli(*SERVICES[service][0], env=environment).stderr  # no secret


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_an_unreachable_redis_is_waited_for_then_named(service, redis_with_password, s3_server):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    environment = env(redis_with_password, s3_server, STYLEBATCH_REDIS_URL=url)
    took = refused(SERVICES[service][0], environment, "STYLEBATCH_REDIS_URL", "did not answer")
    assert took >= 2  # STYLEBATCH_STARTUP_WAIT


@pytest.mark.parametrize("service", [s for s, (_, keys) in SERVICES.items() if keys])
def test_object_store_keys_it_refuses_stop_the_services_that_hold_them(
    service, redis_with_password, s3_server
):
    args = SERVICES[service][0]
    base = env(redis_with_password, s3_server)
    refused(args, {**base, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "AWS_SECRET_ACCESS_KEY")
    refused(args, {**base, "AWS_ACCESS_KEY_ID": "nosuchkey"}, "AWS_ACCESS_KEY_ID")
    away = {**base, "STYLEBATCH_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    refused(args, away, "STYLEBATCH_S3_ENDPOINT", "did not answer")


def test_metrics_holds_no_keys_and_starts_without_store_settings(redis_with_password, s3_server):
    """It does not ask the object store at start (nor does Flower: the same flag)."""
    environment = env(redis_with_password, s3_server, STYLEBATCH_S3_ENDPOINT="")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        environment.pop(name)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "metrics", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **environment, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").status == 200,
            30,
            "metrics",
        )
    finally:
        proc.terminate()
        proc.wait(10)


def test_metrics_refuses_an_empty_password(redis_with_password, s3_server):
    result = run_cli(
        "metrics",
        "--port",
        "0",
        env=env(redis_with_password, s3_server, STYLEBATCH_METRICS_AUTH="metrics:"),
    )
    assert result.returncode == 2 and "STYLEBATCH_METRICS_AUTH" in result.stderr
