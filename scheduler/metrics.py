"""The fleet's own Prometheus endpoint (`stylebatch metrics`). Every value is read from
counters and small keys in Redis: the render queues' lengths and their oldest message, the
counters of jobs in progress, the fleet counters that each render's end updates atomically
(common/state.py), and the heartbeats. A scrape never reads a job's renders, so its cost does
not grow with job size. Served on a private port, behind basic auth when
STYLEBATCH_METRICS_AUTH (``user:password``) is set. The alert rules in
deploy/prometheus/alerts.yml use these names.
"""

from __future__ import annotations

import base64
import hmac
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from common import broker
from common.queue import BOOKKEEPING_QUEUE, RENDER_QUEUE
from common.settings import Settings
from common.state import RENDER_SECONDS_BUCKETS, TERMINAL, JobStore

STATES = ("pending", "running", *TERMINAL)
NAMES = (  # every metric exported, as Prometheus sees it (what the alert rules may use)
    "stylebatch_queue_depth",
    "stylebatch_queue_oldest_age_seconds",
    "stylebatch_renders",
    "stylebatch_job_renders",
    "stylebatch_renders_ended_total",
    "stylebatch_render_seconds_bucket",
    "stylebatch_render_seconds_count",
    "stylebatch_render_seconds_sum",
    "stylebatch_device_seconds_total",
    "stylebatch_workers_live",
    "stylebatch_workers_unhealthy",
    "stylebatch_jobs_active",
    "stylebatch_jobs_stuck",
    "stylebatch_finalize_failures_total",
    "stylebatch_webhook_failures_total",
    "stylebatch_superseded_total",
    "stylebatch_redis_used_memory_bytes",
    "stylebatch_redis_maxmemory_bytes",
    "stylebatch_redis_evicted_keys_total",
    "stylebatch_redis_evicting",
)


class FleetCollector(Collector):
    def __init__(self, store: JobStore, settings: Settings):
        self.store, self.settings = store, settings

    def collect(self) -> Iterator[Any]:
        r, now = self.store.read, self.store.now()
        yield from self._queues(r, now)
        yield from self._renders(r, now)
        yield from self._fleet(r)
        yield from self._workers(now)
        info = r.info("memory")
        used = GaugeMetricFamily("stylebatch_redis_used_memory_bytes", "Redis used memory")
        used.add_metric([], float(info.get("used_memory", 0)))
        cap = GaugeMetricFamily("stylebatch_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)")
        cap.add_metric([], float(info.get("maxmemory", 0)))
        evicted = CounterMetricFamily(
            "stylebatch_redis_evicted_keys",
            "Keys Redis evicted (any is the fleet's state lost: it must run noeviction)",
        )
        evicted.add_metric([], float(r.info("stats").get("evicted_keys", 0)))
        policy = str(info.get("maxmemory_policy", "noeviction"))
        evicting = GaugeMetricFamily(
            "stylebatch_redis_evicting",
            "1 when Redis's maxmemory-policy may evict keys (anything but noeviction)",
            labels=["policy"],
        )
        evicting.add_metric([policy], 0.0 if policy == "noeviction" else 1.0)
        yield from (used, cap, evicted, evicting)

    def _queues(self, r: Any, now: float) -> Iterable[Any]:
        depth = GaugeMetricFamily(
            "stylebatch_queue_depth", "Messages waiting", labels=["queue", "priority"]
        )
        age = GaugeMetricFamily(
            "stylebatch_queue_oldest_age_seconds",
            "Age of the oldest waiting message (0 when empty)",
            labels=["queue", "priority"],
        )
        for queue, priority, length, sent in broker.depths(r, [RENDER_QUEUE, BOOKKEEPING_QUEUE]):
            # priority as the manifest writes it (9 most urgent); Celery's is 9 - that
            labels = [queue, str(9 - priority)]
            depth.add_metric(labels, float(length))
            age.add_metric(labels, max(0.0, now - sent) if length and sent else 0.0)
        return depth, age

    def _renders(self, r: Any, now: float) -> Iterable[Any]:
        """Renders of the jobs in progress, by state, in all and per job; and stuck jobs."""
        total = GaugeMetricFamily(
            "stylebatch_renders", "Renders of jobs in progress, by state", labels=["state"]
        )
        per_job = GaugeMetricFamily(
            "stylebatch_job_renders", "Renders of one job in progress", labels=["job", "state"]
        )
        active = self.store.active()
        sums = dict.fromkeys(STATES, 0.0)
        stuck = 0
        for job_id in active:
            info = self.store.get(job_id)
            if info is None:
                continue
            counts = {
                "pending": info.pending,
                "running": info.running,
                **{s: info.count(s) for s in TERMINAL},
            }
            for state, value in counts.items():
                sums[state] += value
                per_job.add_metric([job_id, state], float(value))
            idle = info.seconds_since("activity", now)
            if idle > self.settings.stall_after and (counts["pending"] or counts["running"]):
                stuck += 1  # what the reconciler would look at (workers/watchdog.py)
        for state, value in sums.items():
            total.add_metric([state], value)
        jobs = GaugeMetricFamily("stylebatch_jobs_active", "Jobs not yet ended")
        jobs.add_metric([], float(len(active)))
        stalled = GaugeMetricFamily(
            "stylebatch_jobs_stuck",
            "Jobs in progress with no render activity for STYLEBATCH_STALL_AFTER",
        )
        stalled.add_metric([], float(stuck))
        return total, per_job, jobs, stalled

    def _fleet(self, r: Any) -> Iterable[Any]:
        counters = {k: float(v) for k, v in self.store.fleet_counters().items()}
        ended = CounterMetricFamily(
            "stylebatch_renders_ended", "Renders ended, by outcome", labels=["status"]
        )
        for status in TERMINAL:
            ended.add_metric([status], counters.get(f"renders_ended:{status}", 0.0))
        device = CounterMetricFamily(
            "stylebatch_device_seconds", "Render time by device type", labels=["device"]
        )
        for key, value in counters.items():
            if key.startswith("device_seconds:"):
                device.add_metric([key.split(":", 1)[1]], value)
        buckets, running = [], 0.0
        for le in (*map(str, RENDER_SECONDS_BUCKETS), "+Inf"):
            running += counters.get(f"render_seconds_bucket:{le}", 0.0)
            buckets.append((le if le == "+Inf" else str(float(le)), running))
        seconds = HistogramMetricFamily(
            "stylebatch_render_seconds", "Seconds per render (its share of its batch)"
        )
        seconds.add_metric([], buckets, counters.get("render_seconds_sum", 0.0))
        finalize = CounterMetricFamily(
            "stylebatch_finalize_failures", "Jobs whose summary could not be written"
        )
        finalize.add_metric([], counters.get("failures:finalize", 0.0))
        webhook = CounterMetricFamily(
            "stylebatch_webhook_failures", "Webhooks given up after every retry"
        )
        webhook.add_metric([], counters.get("failures:webhook", 0.0))
        superseded = CounterMetricFamily(
            "stylebatch_superseded",
            "Outcomes refused because a newer attempt held the render (a paused or cut-off "
            "worker's late result)",
        )
        superseded.add_metric([], counters.get("superseded", 0.0))
        return ended, device, seconds, finalize, webhook, superseded

    def _workers(self, now: float) -> Iterable[Any]:
        live = GaugeMetricFamily(
            "stylebatch_workers_live", "Worker processes whose heartbeat is fresh"
        )
        sick = GaugeMetricFamily(
            "stylebatch_workers_unhealthy",
            "Live worker processes that reported themselves unhealthy",
        )
        fresh = {
            owner: info
            for owner, info in self.store.workers().items()
            if info["age"] < self.settings.worker_timeout
        }
        live.add_metric([], float(len(fresh)))
        sick.add_metric([], float(sum(not i.get("healthy", True) for i in fresh.values())))
        return live, sick


def app(store: JobStore, settings: Settings, auth: str = "") -> Any:
    """A WSGI app serving /metrics (basic auth when ``auth`` is ``user:password``)."""
    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, settings))
    inner = make_wsgi_app(registry)
    expected = "Basic " + base64.b64encode(auth.encode()).decode() if auth else ""

    def guarded(environ: dict, start_response: Any) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if expected and not hmac.compare_digest(given.encode(), expected.encode()):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="stylebatch"')])
            return [b"authentication required\n"]
        return inner(environ, start_response)

    return guarded


def serve(store: JobStore, settings: Settings, bind: str, port: int, auth: str) -> None:
    """Serve until SIGTERM or SIGINT, then return (exit status 0). The handlers are installed
    explicitly: as a container's PID 1 a process gets no default action for SIGTERM, so
    without them `docker compose stop` or a pod's deletion waits out the grace period and
    kills it."""
    import signal
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    with make_server(bind, port, app(store, settings, auth), handler_class=Quiet) as server:

        def stop(signum: int, _frame: Any) -> None:
            # shutdown() waits for serve_forever() to return, which runs in this thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        started = time.strftime("%H:%M:%S")
        print(f"{started} serving stylebatch metrics on http://{bind}:{port}/metrics", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        print(f"{time.strftime('%H:%M:%S')} stylebatch metrics stopped", flush=True)
