"""Redis high availability for real: a primary, replicas and three sentinels on loopback
(tests/support/services.py SentinelSet). The job store's client and a Celery worker must ride out a
``SENTINEL FAILOVER`` and a SIGKILLed primary (docs/operations.md)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import redis

from common.queue import BOOKKEEPING_QUEUE, make_app
from common.redis_client import client, planned_failover
from common.settings import Settings
from tests.support.paths import ROOT
from tests.support.services import SentinelSet, Worker, wait_for
from tests.support.tools import REDIS, require


@pytest.fixture(autouse=True)
def redis_installed():
    require("redis-server", REDIS)


def settings_of(group: SentinelSet, monkeypatch, **env: str) -> Settings:
    for name, value in {**group.env(), **env}.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


class Writer(threading.Thread):
    """Writes key after key through one client, as the job store does; ``written`` are those
    whose SET returned OK, ``confirmed`` those a replica also had (WAIT 1 in the same pipeline,
    so on the same connection and node). An unconfirmed key is written again."""

    def __init__(self, r: redis.Redis):
        super().__init__(daemon=True)
        self.r, self.written, self.confirmed, self.error = r, [], [], None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            n = 0
            while not self.stopping.is_set():
                key = f"write:{n}"
                pipe = self.r.pipeline(transaction=False)
                pipe.set(key, n).wait(1, 1000)
                try:
                    _, replicas = pipe.execute()
                except redis.ResponseError:  # WAIT reached a node just demoted
                    replicas = 0
                self.written.append(key)
                if replicas >= 1:
                    self.confirmed.append(key)
                    n += 1
                time.sleep(0.02)
        except Exception as exc:  # the test reports it
            self.error = exc

    def wait_more(self, count: int, timeout: float) -> None:
        start = len(self.confirmed)
        wait_for(lambda: self.error or len(self.confirmed) >= start + count, timeout, "writes")
        assert self.error is None, f"a write failed: {self.error!r}"

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert self.error is None, f"a write failed: {self.error!r}"


def test_the_store_client_writes_through_a_failover_and_a_primary_crash(tmp_path, monkeypatch):
    """A planned failover (writes held meanwhile) loses no write that returned OK; a SIGKILLed
    primary none that a replica confirmed (WAIT 1); writes go on after each."""
    group = SentinelSet(tmp_path, replicas=2)
    try:
        settings = settings_of(group, monkeypatch)
        r = client(settings)
        writer = Writer(r)
        writer.start()
        writer.wait_more(20, 15)
        first = group.master()
        second = planned_failover(settings)[1]
        assert second != first and group.master() == second
        writer.wait_more(20, 30)
        assert r.connection_pool.master_address == ("127.0.0.1", second)
        group.wait_following(first)  # Sentinel demoted the old primary: what it had is gone
        written = list(writer.written)
        lost = [key for key in written if not group.node(second).exists(key)]
        assert not lost, f"planned failover: {len(lost)} of {len(written)} writes lost: {lost}"
        writer.wait_more(10, 30)
        crashed = group.kill_primary()
        group.wait_master(not_at=crashed)
        writer.wait_more(20, 30)
        writer.stop()
        # the primary now (on a loaded machine one election may fail and a second one follow)
        third = group.wait_master(not_at=crashed)
        final = group.node(third)
        lost = [key for key in writer.confirmed if not final.exists(key)]
        assert not lost, f"crash: {len(lost)} of {len(writer.confirmed)} confirmed writes lost"
        assert r.connection_pool.master_address == ("127.0.0.1", third)
        assert r.set("after", "1") and final.get("after") == "1"
    finally:
        group.stop()


def test_after_a_bare_sentinel_failover_the_client_follows_the_new_primary(tmp_path, monkeypatch):
    """SENTINEL FAILOVER alone: the client keeps writing to the old primary until Sentinel
    demotes it (those writes are lost: docs/operations.md), then READONLY, and every retry must
    ask the sentinels again rather than reconnect to the old address (redis/redis-py#3874)."""
    group = SentinelSet(tmp_path, replicas=2)
    try:
        r = client(settings_of(group, monkeypatch))
        writer = Writer(r)
        writer.start()
        writer.wait_more(10, 15)
        first = group.master()
        second = group.failover(rejoin=True)
        writer.wait_more(20, 30)  # redis-py's own connection gave up here, after ~70 s
        writer.stop()
        assert r.connection_pool.master_address == ("127.0.0.1", second) != ("127.0.0.1", first)
    finally:
        group.stop()


def test_a_celery_worker_and_its_senders_ride_out_a_failover(tmp_path, monkeypatch):
    """Tasks sent by name before, during and after a planned failover, to a real `celery
    worker`: every one runs (at least once), counted on the primary once the old one is
    demoted, and results are read back through Sentinel."""
    from tests.support.sentinel_tasks import DONE, RUNS, TASK

    group = SentinelSet(tmp_path / "redis", replicas=2)
    worker, app, results = None, None, {}
    try:
        settings = settings_of(group, monkeypatch, STYLEBATCH_MAX_TIME_LIMIT="8")
        env = {
            **os.environ,
            **group.env(),
            "STYLEBATCH_MAX_TIME_LIMIT": "8",  # unacked tasks come back within ~20 s
            "PYTHONPATH": str(ROOT),
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.support.sentinel_tasks",
            "worker",
            "-Q",
            BOOKKEEPING_QUEUE,
            "-P",
            "solo",
            "-n",
            "sentinel@%h",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        worker = Worker(argv, env, tmp_path / "worker.log")
        worker.wait_ready(60)
        r = client(settings)
        app = make_app(settings)
        stop = threading.Event()

        def send() -> None:  # a task every 50 ms until told to stop
            n = 0
            while not stop.is_set():
                results[n] = app.send_task(TASK, args=[n], queue=BOOKKEEPING_QUEUE)
                n += 1
                time.sleep(0.05)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_for(lambda: r.scard(DONE) >= 20, 30, "the first tasks")
        first = group.master()
        planned_failover(settings)
        sent_at_failover = len(results)
        group.wait_following(first)  # past the point where writes to it would be lost
        wait_for(lambda: len(results) >= sent_at_failover + 20, 30, "tasks sent after")
        stop.set()
        sender.join(30)
        total = len(results)
        wait_for(lambda: r.scard(DONE) == total, 45, f"all {total} tasks")
        assert {int(n) for n in r.smembers(DONE)} == set(range(total))
        assert int(r.get(RUNS)) >= total  # at least once
        assert results[total - 1].get(timeout=30) == total - 1  # results through Sentinel
        assert worker.proc.poll() is None
        log = (tmp_path / "worker.log").read_text()
        assert "Unrecoverable error" not in log
    finally:
        results.clear()  # while Redis is up: a result unsubscribes when collected
        if app is not None:
            app.close()
        if worker is not None:
            worker.stop()
        group.stop()
