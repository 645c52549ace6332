"""How the settings name Redis, alone or behind Sentinel, with its one secret kept in one
setting: `describe`, the sentinels' addresses, the Celery URLs and transport options, TLS. No
Redis is reached (a Sentinel set for real: tests/fleet/test_sentinel.py)."""

from __future__ import annotations

import pytest
from redis.connection import SSLConnection

from common.queue import make_app
from common.redis_client import celery_urls, client, describe, sentinel_addresses
from common.settings import Settings


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
