"""What a long-running service checks before it starts: that Redis takes its password and
answers, and that the object store takes its keys. A broken setting then stops the service at
once, with one line that names it, instead of a reconnect loop or a traceback at the first
render that names nothing (deploy/: a container that exits 4 with the reason)."""

from __future__ import annotations

import contextlib
import time

from common.errors import ConfigError
from common.settings import Settings
from common.state import JobStore
from common.uris import is_s3, parse_s3

# The store refused the keys themselves, not what a policy lets them do
BAD_KEYS = {
    "InvalidAccessKeyId": "AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY",
    "InvalidToken": "AWS_SESSION_TOKEN",
    "ExpiredToken": "AWS_SESSION_TOKEN",
}


def _answered(ask, unreachable: tuple, setting: str, what: str, wait: float) -> None:
    """Call ``ask`` until it returns. An ``unreachable`` error is retried for ``wait`` seconds,
    then becomes a ConfigError naming ``setting``; ``ask`` raises its own for a refusal."""
    deadline = time.monotonic() + wait
    while True:
        try:
            ask()
            return
        except unreachable as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"{setting}: {what} did not answer in {wait:g} s "
                    f"(STYLEBATCH_STARTUP_WAIT): {exc}"
                ) from None
        time.sleep(1)


def check_redis(settings: Settings) -> None:
    import redis

    from common.redis_client import describe

    where = f"Redis {describe(settings)}"  # never with the password
    store = JobStore.from_settings(settings, retries=0)

    def ask() -> None:
        try:
            store.now()
        except redis.AuthenticationError as exc:  # a ConnectionError, but not a transient one
            raise ConfigError(
                f"STYLEBATCH_REDIS_URL: {where} refused the password ({exc})"
            ) from None
        except redis.ResponseError as exc:
            raise ConfigError(f"STYLEBATCH_REDIS_URL: {where} refused the client ({exc})") from None

    unreachable = (redis.ConnectionError, redis.TimeoutError)
    _answered(ask, unreachable, "STYLEBATCH_REDIS_URL", where, settings.startup_wait)
    check_memory_policy(store, where)
    from common.state.upgrade import upgrade

    upgrade(store)


def check_memory_policy(store: JobStore, where: str) -> None:
    """ConfigError unless Redis never evicts keys (``maxmemory-policy noeviction``). The
    fleet's state is not a cache: an evicted job spec, render state or broker binding is a
    job lost without a word (every submit says OK, and the job shows running forever), and
    job keys carry TTLs once ended, so even the ``volatile-*`` policies (the default of
    several managed services) evict them. With noeviction, a full Redis refuses writes
    instead: loudly, and nothing is lost (docs/operations.md, "Redis out of memory")."""
    policy = str(store.read.info("memory").get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        raise ConfigError(
            f"STYLEBATCH_REDIS_URL: {where} has maxmemory-policy {policy}, which evicts the "
            "fleet's state; set maxmemory-policy noeviction (docs/operations.md)"
        )


def _bucket(settings: Settings) -> str:
    """A bucket this component may list, to ask the store about its keys: the first one named
    by the allowed outputs or inputs ('' if none is)."""
    for prefix in (*settings.allowed_outputs, *settings.allowed_inputs):
        if is_s3(prefix):
            with contextlib.suppress(ValueError):  # "s3://": any bucket, none named
                return parse_s3(prefix)[0]
    return ""


def uses_object_store(settings: Settings) -> bool:
    """Whether this deployment is on an object store at all (an endpoint, or keys)."""
    import os

    return bool(settings.s3_endpoint or os.environ.get("AWS_ACCESS_KEY_ID"))


def check_object_store(settings: Settings) -> None:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    from common.storage import s3_client

    endpoint = settings.s3_endpoint or "AWS S3"
    client = s3_client(settings)
    bucket = _bucket(settings)

    def ask() -> None:
        try:
            if bucket:
                client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            else:
                client.list_buckets()
        except NoCredentialsError:
            raise ConfigError(
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: not set, and the object store "
                f"{endpoint} needs them"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in BAD_KEYS:
                raise ConfigError(
                    f"{BAD_KEYS[code]}: the object store {endpoint} refused this service's "
                    f"keys ({code})"
                ) from None
            # else the keys are good; what they may do is the policy's (AccessDenied)

    unreachable = (EndpointConnectionError, ConnectTimeoutError)
    _answered(ask, unreachable, "STYLEBATCH_S3_ENDPOINT", endpoint, settings.startup_wait)


def check_services(settings: Settings, object_store: bool) -> None:
    """Redis, then (for a service that holds object-store keys) the store. ConfigError."""
    check_redis(settings)
    if object_store and uses_object_store(settings):
        check_object_store(settings)
