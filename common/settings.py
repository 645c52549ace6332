"""Deployment settings, read from the environment only (never from manifests), so secrets stay
out of job files, summaries and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _prefixes(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.strip() for p in _env(name, ",".join(default)).split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS
    redis_tls_ca: str = ""  # CA bundle that signed the Redis server's certificate (rediss://)
    # Redis Sentinel (docs/operations.md): "host:port,host:port,..."; empty is plain Redis at
    # redis_url. With sentinels, redis_url gives only the password, user and db (its host is
    # ignored) and the master's address comes from the sentinels, named redis_master.
    redis_sentinels: str = ""
    redis_master: str = "stylebatch"
    redis_sentinel_password: str = field(default="", repr=False)  # if the sentinels want one
    # Replicas that must hold a job's end (and its creation) before it is acted on (WAIT):
    # replication is asynchronous, so a failover may otherwise lose an end that was already
    # announced. -1: 1 with sentinels, 0 without (docs/operations.md).
    redis_wait_replicas: int = -1
    s3_endpoint: str = ""  # empty: AWS itself
    s3_region: str = "us-east-1"
    s3_addressing: str = "path"  # path or virtual
    weights: str = "imagenet"
    device: str = "auto"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "stylebatch")
    max_renders: int = 100_000
    max_input_bytes: int = 64 * 1024 * 1024
    max_input_pixels: int = 64_000_000
    # Where inputs may come from (URI or absolute-path prefixes). Workers read only these, so a
    # submitted manifest cannot make them read local files; `stylebatch run` adds "/".
    allowed_inputs: tuple[str, ...] = ("s3://",)
    # Where outputs may go (common/access.py): local paths only if listed; the fleet's own
    # locations (weights, schedules, code, cache) never, whatever this says. `run` adds "/".
    allowed_outputs: tuple[str, ...] = ("s3://",)
    schedules: str = ""  # where beat reads scheduled manifests (protected from outputs)
    min_input_side: int = 16  # a shorter input side is refused (degenerate panoramas)
    # A manifest's globs and prefixes (common/listing.py) look at this many entries (objects
    # or directory entries, all of them together) and take this many seconds at most: past
    # either the manifest is refused, naming the limit, so one submit cannot walk a disk or a
    # bucket for everyone else's time.
    max_listed: int = 10_000
    list_seconds: float = 5.0
    input_cache_bytes: int = 2 << 30
    max_time_limit: int = 3 * 3600  # hard limit on any task, seconds
    # For time limits: 0 takes the device's figure from common.queue.SECONDS_PER_MPIX_ITERATION
    seconds_per_mpix_iteration: float = 0.0
    # torch's intra-op threads in a render process; 0: the CPUs this process may use (its
    # affinity and cgroup CPU quota) divided among the render processes beside it
    # (common.queue.torch_threads; `stylebatch worker` sets this per process)
    torch_threads: int = 0
    # Celery's task results (read by the render task's errback for the failure's reason,
    # and by nothing after): kept this long
    result_expires: int = 3600
    job_ttl: int = 30 * 24 * 3600  # an ended job's state is kept this long in Redis
    # Recovery (docs/reliability.md): a worker process silent this long is dead and its
    # renders are re-driven; it beats every heartbeat_interval, also mid-render.
    worker_timeout: float = 60.0
    heartbeat_interval: float = 10.0
    # A running job with pending renders, nothing running and no activity this long has its
    # queue checked, and renders that have no task are enqueued again; the same for a job
    # stuck finalizing.
    stall_after: float = 300.0
    watchdog_interval: float = 15.0  # how often the bookkeeping worker reaps and reconciles
    # A service checks Redis and its object-store keys before it starts: an unreachable one is
    # waited for this long (seconds), then the service exits 4 naming the setting.
    startup_wait: float = 60.0
    max_device_errors: int = 3  # consecutive device errors before a worker steps aside
    # Job-end webhooks (docs/campaigns.md): a manifest's URL must start with one of these;
    # every POST is signed (HMAC-SHA256 over a timestamp and the body) with the fleet's secret,
    # or a web team's own (common/teams.py); never one from a manifest.
    webhook_allowed: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    webhook_secret_previous: str = field(default="", repr=False)  # also valid while rotating
    webhook_retries: int = 6  # deliveries retried with backoff: 2, 4, 8 .. 300 s
    webhook_backoff: float = 2.0
    # Content credentials (C2PA, docs/campaigns.md): off unless this or a manifest turns them
    # on; the certificate chain (PEM) and private key (PKCS#8 PEM) are files on the workers.
    c2pa_sign: bool = False
    c2pa_cert: str = ""
    c2pa_key: str = field(default="", repr=False)
    c2pa_alg: str = "es256"
    c2pa_tsa_url: str = ""
    # The web front (`stylebatch serve`, docs/web.md): its teams (a file, or JSON: team ->
    # token's SHA-256 or token file, allowed inputs and outputs), the largest manifest it
    # takes, where it keeps the gallery's thumbnails and how many bytes of them at most, and
    # whether its session cookie is Secure ("" auto: unless `serve` is bound to loopback).
    web_teams: str = field(default="", repr=False)
    web_max_body: int = 1 << 20
    web_thumbnails: str = ""  # empty: cache_dir / "thumbnails"
    web_thumbnail_cache_bytes: int = 512 << 20
    web_secure_cookies: str = ""
    # Each team's rate, across replicas (docs/web.md): requests (any), and submits (POST
    # /jobs, re-renders, exports) on top; a burst of this many at once, refilled at the rate.
    web_requests_per_second: float = 10.0
    web_request_burst: int = 120
    web_submits_per_minute: float = 10.0
    web_submit_burst: int = 10
    web_session_seconds: int = 12 * 3600  # a login lasts this long (logout ends it at once)
    # processes that read and plan posted manifests, apart from the server's event loop
    web_planners: int = 2
    # "user:password" of /metrics (the fleet's exporter and the web front's): basic auth
    metrics_auth: str = field(default="", repr=False)
    # Flower's basic auth (required by `stylebatch flower`: Flower shows every job)
    flower_user: str = ""
    flower_password: str = field(default="", repr=False)

    def signs(self, requested: bool | str | None) -> bool:
        """Whether outputs get content credentials: a manifest's ``output.credentials`` (as
        parsed, or as recorded in the job: "1", "0", "") if it says, else STYLEBATCH_C2PA_SIGN."""
        if requested in (None, ""):
            return self.c2pa_sign
        return requested in (True, "1", "true")

    @classmethod
    def local_run(cls) -> Settings:
        """What `stylebatch run` (and `validate` of a manifest on local files alone) checks a
        manifest with: the user's own manifest on their own machine, so local files may be
        read and written unless STYLEBATCH_ALLOWED_INPUTS / _OUTPUTS say otherwise (the
        fleet's own locations stay refused whatever these say)."""
        import dataclasses

        settings = cls.from_env()
        if "STYLEBATCH_ALLOWED_INPUTS" not in os.environ:
            settings = dataclasses.replace(settings, allowed_inputs=(*settings.allowed_inputs, "/"))
        if "STYLEBATCH_ALLOWED_OUTPUTS" not in os.environ:
            settings = dataclasses.replace(
                settings, allowed_outputs=(*settings.allowed_outputs, "/")
            )
        return settings

    @classmethod
    def from_env(cls) -> Settings:
        default = cls()
        return cls(
            redis_url=_env("STYLEBATCH_REDIS_URL", default.redis_url),
            redis_tls_ca=_env("STYLEBATCH_REDIS_TLS_CA"),
            redis_sentinels=_env("STYLEBATCH_REDIS_SENTINELS"),
            redis_master=_env("STYLEBATCH_REDIS_MASTER") or default.redis_master,
            redis_sentinel_password=_env("STYLEBATCH_REDIS_SENTINEL_PASSWORD"),
            redis_wait_replicas=int(_env("STYLEBATCH_REDIS_WAIT_REPLICAS", "-1")),
            s3_endpoint=_env("STYLEBATCH_S3_ENDPOINT", _env("AWS_ENDPOINT_URL")),
            s3_region=_env("STYLEBATCH_S3_REGION", _env("AWS_DEFAULT_REGION", default.s3_region)),
            s3_addressing=_env("STYLEBATCH_S3_ADDRESSING", default.s3_addressing),
            weights=_env("STYLEBATCH_WEIGHTS", default.weights),
            device=_env("STYLEBATCH_DEVICE", default.device),
            cache_dir=Path(_env("STYLEBATCH_CACHE_DIR", str(default.cache_dir))),
            max_renders=int(_env("STYLEBATCH_MAX_RENDERS", str(default.max_renders))),
            max_input_bytes=int(_env("STYLEBATCH_MAX_INPUT_BYTES", str(default.max_input_bytes))),
            max_input_pixels=int(
                _env("STYLEBATCH_MAX_INPUT_PIXELS", str(default.max_input_pixels))
            ),
            allowed_inputs=_prefixes("STYLEBATCH_ALLOWED_INPUTS", default.allowed_inputs),
            allowed_outputs=_prefixes("STYLEBATCH_ALLOWED_OUTPUTS", default.allowed_outputs),
            schedules=_env("STYLEBATCH_SCHEDULES"),
            min_input_side=int(_env("STYLEBATCH_MIN_INPUT_SIDE", str(default.min_input_side))),
            max_listed=int(_env("STYLEBATCH_MAX_LISTED", str(default.max_listed))),
            list_seconds=float(_env("STYLEBATCH_LIST_SECONDS", str(default.list_seconds))),
            input_cache_bytes=int(
                _env("STYLEBATCH_INPUT_CACHE_BYTES", str(default.input_cache_bytes))
            ),
            max_time_limit=int(_env("STYLEBATCH_MAX_TIME_LIMIT", str(default.max_time_limit))),
            seconds_per_mpix_iteration=float(
                _env(
                    "STYLEBATCH_SECONDS_PER_MPIX_ITERATION", str(default.seconds_per_mpix_iteration)
                )
            ),
            torch_threads=int(_env("STYLEBATCH_TORCH_THREADS") or "0"),
            result_expires=int(_env("STYLEBATCH_RESULT_EXPIRES", str(default.result_expires))),
            job_ttl=int(_env("STYLEBATCH_JOB_TTL", str(default.job_ttl))),
            worker_timeout=float(_env("STYLEBATCH_WORKER_TIMEOUT", str(default.worker_timeout))),
            heartbeat_interval=float(
                _env("STYLEBATCH_HEARTBEAT_INTERVAL", str(default.heartbeat_interval))
            ),
            stall_after=float(_env("STYLEBATCH_STALL_AFTER", str(default.stall_after))),
            watchdog_interval=float(
                _env("STYLEBATCH_WATCHDOG_INTERVAL", str(default.watchdog_interval))
            ),
            startup_wait=float(_env("STYLEBATCH_STARTUP_WAIT", str(default.startup_wait))),
            max_device_errors=int(
                _env("STYLEBATCH_MAX_DEVICE_ERRORS", str(default.max_device_errors))
            ),
            webhook_allowed=_prefixes("STYLEBATCH_WEBHOOK_ALLOWED", ()),
            webhook_secret=_env("STYLEBATCH_WEBHOOK_SECRET"),
            webhook_secret_previous=_env("STYLEBATCH_WEBHOOK_SECRET_PREVIOUS"),
            webhook_retries=int(_env("STYLEBATCH_WEBHOOK_RETRIES", str(default.webhook_retries))),
            webhook_backoff=float(_env("STYLEBATCH_WEBHOOK_BACKOFF", str(default.webhook_backoff))),
            c2pa_sign=_env("STYLEBATCH_C2PA_SIGN", "0").lower() in ("1", "true", "yes", "on"),
            c2pa_cert=_env("STYLEBATCH_C2PA_CERT"),
            c2pa_key=_env("STYLEBATCH_C2PA_KEY"),
            c2pa_alg=_env("STYLEBATCH_C2PA_ALG", default.c2pa_alg),
            c2pa_tsa_url=_env("STYLEBATCH_C2PA_TSA_URL"),
            web_teams=_env("STYLEBATCH_WEB_TEAMS"),
            web_max_body=int(_env("STYLEBATCH_WEB_MAX_BODY", str(default.web_max_body))),
            web_thumbnails=_env("STYLEBATCH_WEB_THUMBNAILS"),
            web_thumbnail_cache_bytes=int(
                _env("STYLEBATCH_WEB_THUMBNAIL_CACHE_BYTES", str(default.web_thumbnail_cache_bytes))
            ),
            web_secure_cookies=_env("STYLEBATCH_WEB_SECURE_COOKIES").lower(),
            web_requests_per_second=float(
                _env("STYLEBATCH_WEB_REQUESTS_PER_SECOND", str(default.web_requests_per_second))
            ),
            web_request_burst=int(
                _env("STYLEBATCH_WEB_REQUEST_BURST", str(default.web_request_burst))
            ),
            web_submits_per_minute=float(
                _env("STYLEBATCH_WEB_SUBMITS_PER_MINUTE", str(default.web_submits_per_minute))
            ),
            web_submit_burst=int(
                _env("STYLEBATCH_WEB_SUBMIT_BURST", str(default.web_submit_burst))
            ),
            metrics_auth=_env("STYLEBATCH_METRICS_AUTH"),
            flower_user=_env("STYLEBATCH_FLOWER_USER"),
            flower_password=_env("STYLEBATCH_FLOWER_PASSWORD"),
            web_planners=int(_env("STYLEBATCH_WEB_PLANNERS", str(default.web_planners))),
            web_session_seconds=int(
                _env("STYLEBATCH_WEB_SESSION_SECONDS", str(default.web_session_seconds))
            ),
        )
