"""The Celery tasks a worker runs. Torch is imported on the first render, in the process that
renders (never in a parent that forks), and the engine is then kept for the process's life."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from celery.utils.log import get_task_logger
from celery.worker.request import Request

from common.errors import DeviceError, StylebatchError, TransientError
from common.jobs import JobStore
from common.params import schedule
from common.queue import (
    BOOKKEEPING_QUEUE,
    EXIT_SICK,
    FAILED_TASK,
    FINALIZE_TASK,
    MAX_CRASHES,
    NOTIFY_TASK,
    RENDER_TASK,
    TRANSIENT_RETRIES,
    make_app,
    retry_delay,
    seconds_per_unit,
    time_limits,
)
from common.report import publish, record_key
from common.settings import Settings
from common.sizes import parse_size
from common.storage import open_storage
from workers.liveness import Heartbeat, known_dead, owner_id
from workers.render import ENGINE_VERSION, Renderer, earlier

MAX_DEVICE_RETRIES = 5  # a render that meets device errors on this many tries fails

settings = Settings.from_env()
app = make_app(settings)
log = get_task_logger(__name__)
_renderers: dict[tuple[str, str], Renderer] = {}
_store: JobStore | None = None
_heartbeat: Heartbeat | None = None
_device_errors = [0]  # consecutive, in this process


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_url(
            settings.redis_url, settings.redis_tls_ca, job_ttl=settings.job_ttl
        )
    return _store


def renderer(weights: str, identity: str = "") -> Renderer:
    """One engine per version of the weights: replaced weights are loaded again."""
    from workers.weights import weights_version

    key = (weights, weights_version(weights, identity))
    if key not in _renderers:
        if len(_renderers) >= 2:  # jobs rarely mix weights; keep GPU memory bounded
            _renderers.clear()
        _renderers[key] = Renderer(settings, weights, settings.device, identity)
    return _renderers[key]


def heartbeat(node: str) -> Heartbeat:
    """This process's heartbeat, started with its first render (after the fork)."""
    global _heartbeat
    if _heartbeat is None:
        _heartbeat = Heartbeat(
            store(), owner_id(node), settings.heartbeat_interval, settings.device
        ).start()
    return _heartbeat


@worker_process_shutdown.connect
def _leave(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


def limits_for(work: Any) -> tuple[int, int] | None:
    """(soft, hard) seconds for a task's work on this worker's device."""
    if not isinstance(work, int | float) or work < 0:
        return None
    return time_limits(float(work), seconds_per_unit(settings), settings.max_time_limit)


def _end(job_id: str, render_id: str, status: str, **fields: Any) -> None:
    if store().finish(job_id, render_id, status, **fields) == 2:
        app.send_task(FINALIZE_TASK, args=[job_id])


class RenderRequest(Request):
    """Runs in the worker's main process: sets a task's time limits for this worker's device
    from the work the task carries."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        limits = limits_for((self.kwargs or {}).get("work"))
        if limits:
            soft, hard = limits
            self.time_limits = (hard, soft)  # Celery's order

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What `celery inspect active` shows: also the limits this worker set."""
        hard, soft = self.time_limits
        return {**super().info(safe), "soft_time_limit": soft, "time_limit": hard}


def _sick_marker(main_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"stylebatch-sick-{main_pid}"


def _step_aside(reason: str) -> None:
    """From the render process: leave a note for the main process, then ask it for a warm
    shutdown (it stops taking tasks and waits for this one, which returns at once)."""
    log.error("stepping aside, device unhealthy: %s", reason)
    _sick_marker(os.getppid()).write_text(reason)
    os.kill(os.getppid(), signal.SIGTERM)


@worker_shutdown.connect
def _exit_status(sender: Any = None, **_: Any) -> None:
    """In the main process: exit with EXIT_SICK if a render process stepped aside."""
    marker = _sick_marker(os.getpid())
    if marker.exists() and sender is not None:
        marker.unlink(missing_ok=True)
        sender.exitcode = EXIT_SICK


class RenderTask(Task):
    Request = RenderRequest


@app.task(name=RENDER_TASK, bind=True, base=RenderTask, max_retries=TRANSIENT_RETRIES)
def render(
    self,
    job_id: str,
    render_ids: list[str],
    size: int,
    styles: list[str],
    content: str,
    work: float | None = None,
) -> dict[str, Any]:
    """Render a group of compatible renders of one job (one content, one size).

    Each render is claimed atomically (common/jobs.py): one already ended, or running under a
    live worker, is a duplicate delivery and is skipped; one running under a dead worker counts
    a crash, and after MAX_CRASHES is failed instead of tried again. S3 or Redis being
    unreachable, or the device failing, is not the render's fault: the renders go back to
    pending, and are retried later (with backoff) or elsewhere.
    """
    jobs = store()
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    beat = heartbeat(self.request.hostname or "worker")
    owner = beat.owner
    storage = open_storage(info.location, settings)
    claimed, ready, ignored = [], [], []
    try:
        for spec in jobs.specs(job_id, render_ids):
            state = jobs.state(job_id, spec.id) or {}
            dead = known_dead(state.get("owner", "")) if state.get("status") == "running" else ""
            claim = jobs.claim(
                job_id, spec.id, owner, settings.worker_timeout, MAX_CRASHES, dead_owner=dead
            )
            if claim.outcome == "gave_up":
                log.warning("render %s: its worker died %d times; failed", spec.id, MAX_CRASHES)
                if claim.complete:
                    app.send_task(FINALIZE_TASK, args=[job_id])
                continue
            if claim.outcome != "claimed":
                ignored.append({"render": spec.id, "why": claim.outcome, "detail": claim.detail})
                continue
            claimed.append(spec)
            beat.hold(job_id, spec.id)
            if claim.crashes:
                log.warning("render %s: its worker died (%d time(s))", spec.id, claim.crashes)
            if info.cancelled:
                _end(job_id, spec.id, "cancelled", error="job cancelled")
                continue
            prior = earlier(storage, spec)
            if prior is not None:  # keep what the job that made it measured
                _end(job_id, spec.id, "skipped", error=None, rendered_by=prior.pop("job"), **prior)
                continue
            ready.append(spec)
        if not ready:
            return {"rendered": [], "ignored": ignored}
        result = _render(self, job_id, info, ready, storage, size)
        _device_errors[0] = 0
        return {**result, "ignored": ignored}
    except TransientError as exc:
        _release(job_id, claimed, owner)
        delay = retry_delay(self.request.retries)
        log.warning(
            "transient failure, retry %d in %.0f s: %s", self.request.retries + 1, delay, exc
        )
        raise self.retry(exc=exc, countdown=delay) from None
    except DeviceError as exc:
        return _device_failed(job_id, claimed, owner, beat, exc)
    except BaseException:
        _release(job_id, claimed, owner)  # whatever went wrong, nothing stays held
        raise
    finally:
        beat.drop(job_id, [s.id for s in claimed])


def _release(job_id: str, specs: list, owner: str) -> None:
    """Hand back what this task still holds (a no-op for renders it already ended)."""
    for spec in specs:
        store().release(job_id, spec.id, owner)


def _device_failed(
    job_id: str, claimed: list, owner: str, beat: Heartbeat, exc: DeviceError
) -> dict[str, Any]:
    """Hand the renders back (retried elsewhere, not counted against them); after
    ``max_device_errors`` in a row, report this process unhealthy and step aside."""
    from scheduler.recovery import redrive

    jobs = store()
    _device_errors[0] += 1
    again = []
    for spec in claimed:
        if not jobs.release(job_id, spec.id, owner):
            continue  # it had ended already
        tries = jobs.device_error(job_id, spec.id)
        if tries >= MAX_DEVICE_RETRIES:
            _end(job_id, spec.id, "failed", error=f"device errors on {tries} tries: {exc}")
        else:
            again.append(spec.id)
    log.error("device error (%d in a row): %s", _device_errors[0], exc)
    sick = _device_errors[0] >= settings.max_device_errors
    if sick:
        beat.unhealthy(f"{_device_errors[0]} device errors in a row: {exc}")
    redrive(job_id, again, jobs, app, settings)
    if sick:
        _step_aside(str(exc))
    return {"rendered": [], "device_error": str(exc), "handed_back": again, "sick": sick}


def _render(task, job_id, info, ready, storage, size) -> dict[str, Any]:
    last = [0.0]

    plan = schedule(ready[0].params, parse_size(ready[0].size).long)
    work = [n * side * side for side, n in plan]  # each scale's share of the render's work
    began = time.monotonic()

    def on_step(scale: int, scales: int, iteration: int, iterations: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or iteration == iterations:
            last[0] = now
            done = sum(work[:scale]) + work[min(scale, len(work) - 1)] * iteration / iterations
            fraction = min(1.0, done / max(1, sum(work)))
            eta = (now - began) * (1 - fraction) / fraction if fraction > 0 else None
            progress = {
                "job": job_id,
                "renders": [s.id for s in ready],
                "size": size,
                "scale": scale + 1,
                "scales": scales,
                "iteration": iteration,
                "iterations": iterations,
                "eta_seconds": round(eta, 1) if eta is not None else None,
            }
            task.update_state(state="PROGRESS", meta=progress)
            # a custom task event: Flower shows it on the task's page (state PROGRESS, and the
            # line as the task's result until it ends); custom states alone send no event
            line = f"scale {scale + 1}/{scales}, iteration {iteration}/{iterations}"
            line += f", eta {eta:.0f} s" if eta is not None else ""
            task.send_event("task-progress", result=line, progress=progress)

    weights = info.meta["weights"]
    r = renderer(weights, ready[0].identities.get(weights, ""))
    fmt, quality = info.meta["format"], int(info.meta["quality"])
    try:
        signed = settings.signs(info.meta.get("credentials"))
        outcomes = r.render_batch(ready, storage, job_id, fmt, quality, on_step, signed)
    except SoftTimeLimitExceeded:
        limit = (limits_for(task.request.kwargs.get("work")) or ("?",))[0]
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
            device=outcome.device,
            pixel_iterations=outcome.pixel_iterations,
            worker=task.request.hostname,
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


@app.task(name=FINALIZE_TASK, bind=True, max_retries=TRANSIENT_RETRIES)
def finalize(self, job_id: str) -> dict[str, Any]:
    """Write the job's summary.json and contact sheet once its last render has ended. An
    unreachable store is retried with backoff; after that, or on a permanent error (the
    bucket gone, access denied), the job ends ``failed`` with the reason. Outputs are kept."""
    jobs = store()
    info = jobs.get(job_id)
    if info is None:
        return {"ignored": "job not found"}
    if info.status != "finalizing":
        return {"ignored": f"job is {info.status}"}
    try:
        summary = jobs.summary(job_id)
        summary.engine = ENGINE_VERSION
        summary.finished = time.time()
        publish(open_storage(info.location, settings), summary, settings)
    except TransientError as exc:
        if self.request.retries < self.max_retries:
            delay = retry_delay(self.request.retries)
            log.warning(
                "finalize %s: retry %d in %.0f s: %s", job_id, self.request.retries + 1, delay, exc
            )
            raise self.retry(exc=exc, countdown=delay) from None
        return _finalize_failed(
            job_id, f"summary not written after {self.max_retries} retries: {exc}"
        )
    except StylebatchError as exc:
        return _finalize_failed(job_id, f"summary not written: {exc}")
    except Exception as exc:  # a bug must end the job with a reason, not retry it forever
        log.exception("finalize %s failed", job_id)
        return _finalize_failed(job_id, f"summary not written: {type(exc).__name__}: {exc}")
    jobs.end_job(job_id, "done")
    _notify(job_id)
    return {
        "job": job_id,
        "counts": summary.counts(),
        "summary": info.location.uri_of(record_key(job_id, "summary.json")),
    }


def _finalize_failed(job_id: str, reason: str) -> dict[str, Any]:
    log.error("job %s failed: %s", job_id, reason)
    store().count_failure("finalize")
    store().end_job(job_id, "failed", reason)
    _notify(job_id)
    return {"job": job_id, "failed": reason}


def _notify(job_id: str) -> None:
    info = store().get(job_id)
    if info is not None and info.meta.get("webhook") and info.terminal:
        app.send_task(NOTIFY_TASK, args=[job_id, info.meta.get("finished", "")])


@app.task(name=NOTIFY_TASK, bind=True, max_retries=None)
def notify(self, job_id: str, finished: str) -> dict[str, Any]:
    """POST the ended job to its webhook, signed; retried with backoff (2, 4, 8 .. 300 s) up
    to STYLEBATCH_WEBHOOK_RETRIES times. Each attempt and the outcome are recorded in the
    job (``webhook_status``, ``webhook_attempts``); a delivery already made for this end of
    the job is not made again."""
    from common.notify import check_webhook, payload, post

    jobs = store()
    info = jobs.get(job_id)
    if info is None or info.meta.get("finished", "") != finished:
        return {"ignored": "the job is gone or has ended again since"}
    url = info.meta.get("webhook", "")
    delivery = f"{job_id}:{finished}"
    if info.meta.get("webhook_delivered") == delivery:
        return {"ignored": "delivered already"}
    refused = check_webhook(url, settings)  # checked at submit; the worker checks again
    if refused:
        jobs.note(job_id, webhook_status=f"refused: {refused[0].message}")
        return {"refused": refused[0].message}
    failed = [
        {"render": r.id, "content": r.content_name, "style": r.style, "size": r.size,
         "error": (jobs.state(job_id, r.id) or {}).get("error")}
        for r in jobs.specs(job_id, jobs.failed(job_id, 20))
    ]  # fmt: skip
    summary = info.location.uri_of(record_key(job_id, "summary.json"))
    delivery, body = payload(info, failed, summary)
    attempts = jobs.tally(job_id, "webhook_attempts")
    error = post(url, body, delivery, settings.webhook_secret)
    if error is None:
        jobs.note(job_id, webhook_status="delivered", webhook_delivered=delivery)
        return {"delivered": url, "attempts": attempts}
    if self.request.retries < settings.webhook_retries:
        delay = min(300.0, settings.webhook_backoff * 2**self.request.retries)
        jobs.note(job_id, webhook_status=f"retrying in {delay:g} s: {error}")
        raise self.retry(countdown=delay)
    status = f"failed after {attempts} attempts: {error}"
    jobs.note(job_id, webhook_status=status)
    jobs.count_failure("webhook")
    log.error("webhook for job %s %s", job_id, status)
    return {"failed": status}


_watchdog: Any = None


@worker_ready.connect
def _start_watchdog(sender: Any = None, **_: Any) -> None:
    """The bookkeeping worker reaps dead workers' renders and reconciles stalled jobs."""
    global _watchdog
    queues = {q.name for q in sender.task_consumer.queues} if sender is not None else set()
    if BOOKKEEPING_QUEUE in queues and _watchdog is None:
        from scheduler.recovery import Watchdog

        _watchdog = Watchdog(store(), app, settings).start()


@worker_shutdown.connect
def _stop_watchdog(**_: Any) -> None:
    if _watchdog is not None:
        _watchdog.stop()
