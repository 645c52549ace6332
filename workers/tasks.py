"""The Celery tasks a worker runs. Torch is imported on the first render, in the process that
renders (never in a parent that forks), and the engine is then kept for the process's life."""

from __future__ import annotations

import socket
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from common.jobs import JobStore
from common.queue import (
    FAILED_TASK,
    FINALIZE_TASK,
    FIRE_TASK,
    MAX_DELIVERIES,
    RENDER_TASK,
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
        _store = JobStore.from_url(settings.redis_url)
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


@app.task(name=RENDER_TASK, bind=True)
def render(
    self, job_id: str, render_ids: list[str], size: int, styles: list[str], content: str
) -> dict[str, Any]:
    """Render a group of compatible renders of one job (one content, one size)."""
    jobs = store()
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    worker = self.request.hostname or socket.gethostname()
    storage = open_storage(info.location, settings)
    ready = []
    for spec in jobs.specs(job_id, render_ids):
        state = jobs.state(job_id, spec.id) or {}
        if state.get("status") in ("done", "skipped", "failed", "cancelled"):
            continue
        if info.cancelled:
            _end(job_id, spec.id, "cancelled", error="job cancelled")
            continue
        deliveries = jobs.deliver(job_id, spec.id)
        if deliveries > MAX_DELIVERIES:
            _end(
                job_id,
                spec.id,
                "failed",
                error=(f"the worker died {deliveries - 1} times while rendering this; given up"),
            )
            continue
        if is_done(storage, spec):
            _end(job_id, spec.id, "skipped", error=None)
            continue
        jobs.start(job_id, spec.id, worker)
        ready.append(spec)
    if not ready:
        return {"rendered": []}

    last = [0.0]

    def on_step(scale: int, scales: int, iteration: int, iterations: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or iteration == iterations:
            last[0] = now
            self.update_state(
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
        for spec in ready:
            _end(
                job_id,
                spec.id,
                "failed",
                error=(
                    f"soft time limit ({self.request.timelimit[1]} s) exceeded; no output written"
                ),
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


@app.task(name=FIRE_TASK)
def fire(source: str, slot: str) -> str:
    """One cron slot of a scheduled manifest (sent by `stylebatch beat`)."""
    from common.schedule import parse_slot
    from scheduler.beat import fire_slot

    return fire_slot(source, parse_slot(slot), settings, app, store())


@app.task(name=FINALIZE_TASK)
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
