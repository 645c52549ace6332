"""Redis high availability for real: a primary, replicas and three sentinels on loopback
(tests/services.py SentinelSet). The job store's client and a Celery worker must ride out a
``SENTINEL FAILOVER`` and a SIGKILLed primary (docs/operations.md)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

import pytest
import redis
from redis.connection import SSLConnection

from common.queue import BOOKKEEPING_QUEUE, make_app
from common.redis_client import (
    celery_urls,
    client,
    describe,
    planned_failover,
    sentinel_addresses,
)
from common.settings import Settings
from tests.conftest import ROOT
from tests.services import RedisServer, SentinelSet, Worker, wait_for

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not on the PATH (Debian: apt-get install redis-server)",
)


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


def test_settings_describe_and_urls_keep_one_secret_in_one_setting(monkeypatch):
    monkeypatch.setenv("STYLEBATCH_REDIS_URL", "redis://:p%40ss@ignored-host/3")
    monkeypatch.setenv("STYLEBATCH_REDIS_SENTINELS", " s1:26379, s2 ,[::1]:26380")
    monkeypatch.setenv("STYLEBATCH_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    monkeypatch.delenv("STYLEBATCH_REDIS_MASTER", raising=False)
    settings = Settings.from_env()
    assert settings.redis_master == "stylebatch"
    assert sentinel_addresses(settings.redis_sentinels) == [
        ("s1", 26379),
        ("s2", 26379),
        ("::1", 26380),
    ]
    text = describe(settings)
    assert "p@ss" not in text and "p%40ss" not in text and "sentinel-secret" not in text
    assert text == "sentinel master 'stylebatch' via s1:26379,s2:26379,[::1]:26380 db 3"
    assert "sentinel-secret" not in repr(settings)
    assert celery_urls(settings) == (
        "sentinel://:p%40ss@s1:26379/3;sentinel://:p%40ss@s2:26379/3;sentinel://:p%40ss@[::1]:26380/3"
    )
    app = make_app(settings)
    transport = app.conf.broker_transport_options
    assert transport["master_name"] == "stylebatch"
    assert transport["sentinel_kwargs"]["password"] == "sentinel-secret"
    assert transport["priority_steps"] == list(range(10)) and transport["sep"] == ":"
    assert transport["queue_order_strategy"] == "priority"
    results = app.conf.result_backend_transport_options
    assert results["master_name"] == "stylebatch"
    assert results["visibility_timeout"] == transport["visibility_timeout"]
    assert type(app.backend).__name__ == "SentinelBackend"
    assert app.backend.connparams["password"] == "p@ss" and app.backend.connparams["db"] == 3
    with pytest.raises(ValueError, match="host:port"):
        sentinel_addresses("s1:port")
    tls = Settings(
        redis_url="rediss://:pw@ignored/1", redis_sentinels="s1:26379", redis_tls_ca="/ca.pem"
    )
    pool = client(tls).connection_pool  # nothing is connected yet
    assert issubclass(pool.connection_class, SSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert pool.connection_kwargs["db"] == 1 and pool.connection_kwargs["password"] == "pw"
    assert make_app(tls).conf.broker_use_ssl["ssl_ca_certs"] == "/ca.pem"
    assert make_app(tls).conf.broker_transport_options["sentinel_kwargs"]["ssl"] is True
    plain = Settings(redis_url="redis://:pw@redis-host:6380/2")
    assert describe(plain) == "redis://redis-host:6380/2"
    assert make_app(plain).conf.broker_url == plain.redis_url
    assert "master_name" not in make_app(plain).conf.broker_transport_options


@needs_redis
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


@needs_redis
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
        third = group.wait_master(not_at=crashed)
        writer.wait_more(20, 30)
        writer.stop()
        final = group.node(third)
        lost = [key for key in writer.confirmed if not final.exists(key)]
        assert not lost, f"crash: {len(lost)} of {len(writer.confirmed)} confirmed writes lost"
        assert r.connection_pool.master_address == ("127.0.0.1", third)
        assert r.set("after", "1") and final.get("after") == "1"
    finally:
        group.stop()


@needs_redis
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


@needs_redis
def test_a_celery_worker_and_its_senders_ride_out_a_failover(tmp_path, monkeypatch):
    """Tasks sent by name before, during and after a planned failover, to a real `celery
    worker`: every one runs (at least once), counted on the primary once the old one is
    demoted, and results are read back through Sentinel."""
    from tests.sentinel_tasks import DONE, RUNS, TASK

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
            "tests.sentinel_tasks",
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
