"""The Celery application as both sides see it: configuration, queues, task names and time
limits. Tasks are sent by name, so the scheduler never imports the workers (or torch)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import ssl
from pathlib import Path
from typing import Any

from celery import Celery

from common.params import schedule
from common.redis_client import celery_transport_options, celery_urls
from common.settings import Settings

RENDER_QUEUE = "render"  # GPU work, one task at a time per process
BOOKKEEPING_QUEUE = "bookkeeping"  # summaries, contact sheets, failure records
RENDER_TASK = "stylebatch.render"
FINALIZE_TASK = "stylebatch.finalize"
FAILED_TASK = "stylebatch.render_failed"
NOTIFY_TASK = "stylebatch.notify"
REVIEW_TASK = "stylebatch.review_published"
MAX_CRASHES = 3  # a render during which its worker died this often is marked failed
TRANSIENT_RETRIES = 10  # S3 or Redis unreachable: retries with backoff (about 4 minutes)
EXIT_SICK = 3  # exit status of a render worker that stepped aside after device errors
EXIT_MISCONFIGURED = 4  # ... that stepped aside because its own configuration is broken
MAX_BATCH_PIXELS = 8 * 512 * 512  # renders optimised together, by total output pixels


def retry_delay(retries: int) -> float:
    """Seconds before retry ``retries + 1`` after a transient error: 1, 2, 4 .. 30, jittered."""
    return min(30, 2**retries) + random.uniform(0, 1)


def retry(task: Any, exc: BaseException | None, countdown: float, **options: Any) -> BaseException:
    """``task.retry``, whose message is never dropped: Celery rejects a task's message
    without requeueing it when it cannot publish the retry (Redis out of memory, or away).
    Requeued instead (or, if even that cannot be written, restored from the unacked set after
    the visibility timeout), the task comes back; its renders were handed back first.
    ``options``: the retry's own (``kwargs``, say)."""
    from celery.exceptions import Reject

    try:
        return task.retry(exc=exc, countdown=countdown, **options)
    except Reject as rejected:
        if rejected.requeue:
            raise
        raise Reject(rejected.reason, requeue=True) from None


def celery_priority(priority: int) -> int:
    """Manifest priority 9 is most urgent; Celery's Redis transport serves 0 first."""
    return 9 - priority


# Seconds per full-size megapixel-iteration (one Adam step over a 1-megapixel image), by device
# type, with head room over what was measured (docs/reliability.md): an H200 ran ~0.01; the
# 2-core CI machine's CPU 10-12 with one render process on both cores (twice that with two
# sharing them). The limits add 3x and a minute on top. The CPU figure is for CPU_FIGURE_THREADS
# torch threads and scales with the threads a process really has (seconds_per_unit).
# STYLEBATCH_SECONDS_PER_MPIX_ITERATION overrides both.
SECONDS_PER_MPIX_ITERATION = {"cuda": 0.05, "cpu": 30.0}
CPU_FIGURE_THREADS = 2
CGROUP = Path("/sys/fs/cgroup")


def task_work(size: int | str, params: dict[str, Any], renders: int) -> float:
    """A task's work in megapixel-iterations of its real frame (an exact size's W x H, a long
    side's at most side x side; the W2 style loss counted twice); sent with the task, so the
    worker that takes it sets limits for its own device."""
    from common.sizes import parse_size

    out = parse_size(size)
    aspect = out.pixels / out.long**2
    work = sum(n * side * side * aspect / 1e6 for side, n in schedule(params, out.long))
    cost = 2 if params.get("style_loss") == "wasserstein" else 1
    return round(work * cost * renders, 6)


def device_kind(device: str) -> str:
    """'cuda' or 'cpu' for a device setting (auto means a GPU where one is visible)."""
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto" and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1"):
        return "cuda"
    return "cpu"


def seconds_per_unit(settings: Settings) -> float:
    """Seconds per megapixel-iteration on this process's device. On a CPU, proportionally more
    with fewer threads than the figure was measured with (one thread: twice); never less with
    more (how the engine scales past two cores was not measured)."""
    if settings.seconds_per_mpix_iteration > 0:
        return settings.seconds_per_mpix_iteration
    kind = device_kind(settings.device)
    if kind == "cpu":
        threads = min(torch_threads(settings), CPU_FIGURE_THREADS)
        return SECONDS_PER_MPIX_ITERATION[kind] * CPU_FIGURE_THREADS / threads
    return SECONDS_PER_MPIX_ITERATION[kind]


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup's quota allows this process, or None where none is set: cgroup v2's
    cpu.max ("QUOTA PERIOD", "max" for none) in the process's own cgroup or at the root of
    the mount (a container's view), else v1's cpu.cfs_quota_us / cpu.cfs_period_us (-1: none).
    The tightest one found counts."""
    limits = []
    own = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    for folder in {root / own, root} if own else {root}:
        with contextlib.suppress(OSError, ValueError):
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota != "max":
                limits.append(int(quota) / int(period or 100000))
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        with contextlib.suppress(OSError, ValueError):
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            if quota_us > 0 and period_us > 0:
                limits.append(quota_us / period_us)
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may run on: its affinity (taskset, cpuset), capped by its cgroup
    quota rounded down (a quota of 1.5 CPUs runs one thread without being throttled)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def torch_threads(settings: Settings, processes: int = 1, root: Path = CGROUP) -> int:
    """Intra-op threads for one of ``processes`` render processes sharing this process's CPUs:
    STYLEBATCH_TORCH_THREADS if set, else the available CPUs divided among them. Sized
    threads matter on a shared CPU: torch's default (every core of the machine) in each
    process makes them preempt one another (a 96 px draft took 65 s with the default beside a
    busy process, 21 s with one thread)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, available_cpus(root) // max(1, processes))


def time_limits(work: float, per_unit: float, max_time_limit: int) -> tuple[int, int]:
    """(soft, hard) seconds for a task of ``work`` units on a device doing one unit in
    ``per_unit`` seconds: three times the estimate plus a minute, capped by the maximum."""
    soft = min(max_time_limit * 0.8, 60 + 3 * work * per_unit)
    hard = min(max_time_limit, soft * 1.25)
    return math.ceil(soft), math.ceil(hard)


def worker_argv(app: str, loglevel: str = "INFO") -> list[str]:
    """A Celery worker process of the fleet, of the app module ``app`` (the render workers'
    ``workers.tasks``, bookkeeping's ``scheduler.bookkeeping.tasks``): events on, one message
    at a time, no gossip or mingle (the fleet's liveness is its heartbeats)."""
    import sys

    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "-E", f"--loglevel={loglevel}",
        "--prefetch-multiplier=1", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    # Unacknowledged messages come back after the visibility timeout: it must exceed the
    # longest a task may run (its hard limit), or a slow render would be delivered twice.
    visibility = settings.max_time_limit + max(10, settings.max_time_limit // 4)
    transport = {
        "visibility_timeout": visibility,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
    }
    # With Redis Sentinel (STYLEBATCH_REDIS_SENTINELS), kombu's and Celery's sentinel://
    # transports find the master by name and follow it through a failover.
    sentinel = celery_transport_options(settings)
    transport.update(sentinel)
    url = celery_urls(settings)
    app = Celery("stylebatch", broker=url, backend=url)
    if settings.redis_url.startswith("rediss://"):
        tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": settings.redis_tls_ca or None}
        app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": visibility, **sentinel},
        visibility_timeout=visibility,
        task_time_limit=settings.max_time_limit,
        task_soft_time_limit=int(settings.max_time_limit * 0.8),
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_track_started=True,
        result_expires=settings.result_expires,
        result_extended=True,
        task_default_queue=BOOKKEEPING_QUEUE,
        task_routes={
            RENDER_TASK: {"queue": RENDER_QUEUE},
            FINALIZE_TASK: {"queue": BOOKKEEPING_QUEUE},
            FAILED_TASK: {"queue": BOOKKEEPING_QUEUE},
            NOTIFY_TASK: {"queue": BOOKKEEPING_QUEUE},
            REVIEW_TASK: {"queue": BOOKKEEPING_QUEUE},
        },
        task_default_priority=celery_priority(5),
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
