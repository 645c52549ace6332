"""The Celery tasks a worker runs. Torch is imported on the first render, in the process that
renders (never in a parent that forks), and the engine is then kept for the process's life."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from common.errors import TransientError
from common.jobs import TERMINAL, JobStore
from common.queue import (
    FAILED_TASK,
    FINALIZE_TASK,
    FIRE_TASK,
    MAX_CRASHES,
    RENDER_TASK,
    TRANSIENT_RETRIES,
    make_app,
)
from common.report import publish
from common.settings import Settings
from common.storage import open_storage
from workers.render import ENGINE_VERSION, Renderer, is_done

settings = Settings.from_env()
app = make_app(settings)
log = get_task_logger(__name__)
_renderers: dict[str, Renderer] = {}
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_url(settings.redis_url, settings.redis_tls_ca)
    return _store


def renderer(weights: str) -> Renderer:
    if weights not in _renderers:
        if len(_renderers) >= 2:  # jobs rarely mix weights; keep GPU memory bounded
            _renderers.clear()
        _renderers[weights] = Renderer(settings, weights, settings.device)
    return _renderers[weights]


def _end(job_id: str, render_id: str, status: str, **fields: Any) -> None:
    if store().finish(job_id, render_id, status, **fields) == 2:
        app.send_task(FINALIZE_TASK, args=[job_id])


@app.task(name=RENDER_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def render(
    self, job_id: str, render_ids: list[str], size: int, styles: list[str], content: str
) -> dict[str, Any]:
    """Render a group of compatible renders of one job (one content, one size).

    A render found "running" when its task starts was being rendered by a worker that died:
    that counts as a crash, and after MAX_CRASHES it is failed instead of tried again. S3 or
    Redis being unreachable is not a crash: the renders go back to pending and the task is
    retried with exponential backoff.
    """
    jobs = store()
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    worker = self.request.hostname or socket.gethostname()
    storage = open_storage(info.location, settings)
    ready = []
    try:
        for spec in jobs.specs(job_id, render_ids):
            state = jobs.state(job_id, spec.id) or {}
            if state.get("status") in TERMINAL:
                continue
            if info.cancelled:
                _end(job_id, spec.id, "cancelled", error="job cancelled")
                continue
            if state.get("status") == "running":
                crashes = jobs.crashed(job_id, spec.id)
                log.warning("render %s: its worker died (%d time(s))", spec.id, crashes)
                if crashes >= MAX_CRASHES:
                    reason = f"the worker died {crashes} times while rendering this; given up"
                    _end(job_id, spec.id, "failed", error=reason)
                    continue
            if is_done(storage, spec):
                _end(job_id, spec.id, "skipped", error=None)
                continue
            jobs.start(job_id, spec.id, worker)
            ready.append(spec)
        if not ready:
            return {"rendered": []}
        return _render(self, job_id, info, ready, storage, size, worker)
    except TransientError as exc:
        for spec in ready:
            jobs.requeue(job_id, spec.id)
        delay = min(30, 2**self.request.retries) + random.uniform(0, 1)
        log.warning(
            "transient failure, retry %d in %.0f s: %s", self.request.retries + 1, delay, exc
        )
        raise self.retry(exc=exc, countdown=delay) from None


def _render(task, job_id, info, ready, storage, size, worker) -> dict[str, Any]:
    last = [0.0]

    def on_step(scale: int, scales: int, iteration: int, iterations: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or iteration == iterations:
            last[0] = now
            task.update_state(
                state="PROGRESS",
                meta={
                    "job": job_id,
                    "renders": [s.id for s in ready],
                    "size": size,
                    "scale": scale + 1,
                    "scales": scales,
                    "iteration": iteration,
                    "iterations": iterations,
                },
            )

    r = renderer(info.meta["weights"])
    fmt, quality = info.meta["format"], int(info.meta["quality"])
    try:
        outcomes = r.render_batch(ready, storage, job_id, fmt, quality, on_step)
    except SoftTimeLimitExceeded:
        limit = task.request.timelimit[1] if task.request.timelimit else None
        for spec in ready:
            _end(
                job_id,
                spec.id,
                "failed",
                error=f"soft time limit ({limit} s) exceeded; no output written",
            )
        return {"rendered": [], "failed": [s.id for s in ready]}
    result: dict[str, Any] = {"rendered": [], "failed": []}
    for outcome in outcomes:
        ok = outcome.status == "done"
        _end(
            job_id,
            outcome.render.id,
            outcome.status,
            seconds=outcome.seconds,
            error=outcome.error,
            losses=outcome.losses,
            worker=worker,
            weights_id=r.weights_id if ok else None,
        )
        if ok:
            result["rendered"].append(info.location.uri_of(outcome.render.key))
        else:
            result["failed"].append({"render": outcome.render.id, "error": outcome.error})
    return result


@app.task(name=FAILED_TASK)
def render_failed(
    request: Any, exc: BaseException, traceback: Any, job_id: str, render_ids: list[str]
) -> None:
    """Errback: a render task that died without recording its renders (hard time limit)."""
    for render_id in render_ids:
        state = store().state(job_id, render_id) or {}
        if state.get("status") in (None, "pending", "running"):
            _end(job_id, render_id, "failed", error=f"{type(exc).__name__}: {exc}")


# Bookkeeping rides out S3 or Redis outages the same way renders do.
RETRY_TRANSIENT = {
    "autoretry_for": (TransientError,),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": TRANSIENT_RETRIES,
}


@app.task(name=FIRE_TASK, **RETRY_TRANSIENT)
def fire(source: str, slot: str) -> str:
    """One cron slot of a scheduled manifest (sent by `stylebatch beat`)."""
    from common.schedule import parse_slot
    from scheduler.beat import fire_slot

    return fire_slot(source, parse_slot(slot), settings, app, store())


@app.task(name=FINALIZE_TASK, **RETRY_TRANSIENT)
def finalize(job_id: str) -> dict[str, Any]:
    """Write the job's summary.json and contact sheet once its last render has ended."""
    jobs = store()
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    summary = jobs.summary(job_id)
    summary.engine = ENGINE_VERSION
    summary.finished = time.time()
    publish(open_storage(info.location, settings), summary, settings)
    jobs.mark_finished(job_id)
    return {
        "job": job_id,
        "counts": summary.counts(),
        "summary": info.location.uri_of("summary.json"),
    }
