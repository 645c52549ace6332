"""The probes' program (common/health.py), which deploy/k8s runs as liveness and readiness
probes, against a real Redis and a real bookkeeping worker: it answers from heartbeats and
pings, and tells a dead process's heartbeat from a live one's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.support.paths import ROOT


def health(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common.health", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probes_answer_from_heartbeats_and_pings(redis_db, tmp_path):
    import dataclasses
    import time

    from common.health import check_workers
    from common.settings import Settings
    from common.state import JobStore
    from scheduler.cli.services import worker_commands
    from tests.support.services import Worker

    url = redis_db
    store = JobStore.from_url(url)
    settings = dataclasses.replace(Settings(), redis_url=url, worker_timeout=2.0)
    host = socket.gethostname()

    # Redis away: liveness passes (a restart would not help), readiness and `redis` fail
    away = {"STYLEBATCH_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert health("worker", "--node", "cpu0", env=away).returncode == 0
    assert health("worker", "--ready", "--node", "cpu0", env=away).returncode == 1
    assert health("redis", env=away).returncode == 1
    assert health("redis", env={"STYLEBATCH_REDIS_URL": url}).returncode == 0

    # a live render process of this pod with a fresh heartbeat: healthy
    owner = f"cpu0@{host}|{host}|{os.getpid()}|abc123"
    store.beat(owner, {"device": "cpu", "healthy": True})
    ok, why = check_workers(settings, ["cpu0"], ready=True)
    assert ok and why.startswith(f"cpu0@{host} beat "), why
    time.sleep(2.2)  # silent past STYLEBATCH_WORKER_TIMEOUT: dead to the watchdog, so unhealthy
    ok, why = check_workers(settings, ["cpu0"], ready=False)
    assert not ok and "heartbeat" in why
    store.beat(owner, {"device": "cpu", "healthy": False, "reason": "3 CUDA errors in a row"})
    ok, why = check_workers(settings, ["cpu0"], ready=False)
    assert not ok and "3 CUDA errors" in why
    # a heartbeat left by a process that is gone is not this pod's: no answer to a ping either
    store.forget(owner)
    store.beat(f"cpu0@{host}|{host}|999999|def456", {"device": "cpu", "healthy": True})
    ok, why = check_workers(settings, ["cpu0"], ready=False, ping_timeout=1.0)
    assert not ok and "no answer to a ping" in why

    # a worker that has not rendered yet (or the bookkeeping one) answers a ping
    (argv, extra), *_ = worker_commands([], host, "INFO", cpu_workers=0, bookkeeping=True)
    env = {**os.environ, **extra, "PYTHONPATH": str(ROOT), "STYLEBATCH_REDIS_URL": url}
    worker = Worker(argv, env, tmp_path / "bookkeeping.log")
    try:
        worker.wait_ready(120)
        probe = health("worker", "--node", "bookkeeping", env={"STYLEBATCH_REDIS_URL": url})
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert f"bookkeeping@{host} answered a ping" in probe.stdout
    finally:
        worker.stop()
    store.r.flushdb()
