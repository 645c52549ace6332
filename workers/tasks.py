"""The render worker's task. Torch is imported on the first render, in the process that
renders (never in a parent that forks), and the engine is then kept for the process's life.
The render task's errback and everything else that ends jobs run in the bookkeeping worker
(scheduler/bookkeeping/), which has no torch."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.signals import worker_process_shutdown, worker_shutdown
from celery.utils.log import get_task_logger
from celery.worker.request import Request
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from common.dispatch import redrive, settle
from common.errors import (
    ConfigError,
    DeviceError,
    StorageError,
    TransientError,
)
from common.imageio import CONTENT_TYPES
from common.params import schedule
from common.queue import (
    EXIT_MISCONFIGURED,
    EXIT_SICK,
    MAX_CRASHES,
    RENDER_TASK,
    TRANSIENT_RETRIES,
    make_app,
    retry,
    retry_delay,
    seconds_per_unit,
    time_limits,
)
from common.settings import Settings
from common.sizes import parse_size
from common.state import Held, JobStore
from common.storage import open_storage
from workers.copies import complete_copies
from workers.liveness import Heartbeat, known_dead, owner_id
from workers.render import Renderer, earlier

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
        _store = JobStore.from_settings(settings)
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


def _end(held: Held, status: str, **fields: Any) -> str:
    """A render's outcome, from the attempt that holds it; a superseded attempt (another has
    the render now) is logged and counted by the state, never recorded."""
    outcome = store().finish(held, status, **fields)
    if outcome == "superseded":
        log.warning("render %s: attempt %d superseded; its %s not recorded", held.render_id,
                    held.attempt, status)  # fmt: skip
    settle(app, held.job_id, outcome)
    return outcome


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


def _step_aside(reason: str, status: int = EXIT_SICK) -> None:
    """From the render process: leave a note for the main process, then ask it for a warm
    shutdown (it stops taking tasks and waits for this one, which returns at once)."""
    log.error("stepping aside (exit %d): %s", status, reason)
    _sick_marker(os.getppid()).write_text(f"{status}\n{reason}")
    os.kill(os.getppid(), signal.SIGTERM)


@worker_shutdown.connect
def _exit_status(sender: Any = None, **_: Any) -> None:
    """In the main process: exit with the status a render process stepped aside with."""
    marker = _sick_marker(os.getpid())
    if marker.exists() and sender is not None:
        status, _, reason = marker.read_text().partition("\n")
        marker.unlink(missing_ok=True)
        log.error("worker stepped aside: %s", reason)
        sender.exitcode = int(status) if status.isdigit() else EXIT_SICK


class Superseded(BaseException):  # a stop, not an error: it passes `except Exception`
    """Every render of a batch was taken by newer attempts: stop optimising at once."""


class RenderTask(Task):
    Request = RenderRequest


@app.task(name=RENDER_TASK, bind=True, base=RenderTask, max_retries=TRANSIENT_RETRIES, shared=False)
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

    Each render is claimed atomically as a new attempt (common/state.py): one already ended,
    or running under a live worker, is a duplicate delivery and is skipped; one running under
    a dead worker counts a crash, and after MAX_CRASHES is failed instead of tried again.
    Every outcome carries the attempt, so a worker that was taken over cannot record or
    write over a newer attempt. S3 or Redis being unreachable, the device failing, or this
    worker's configuration being broken is not the render's fault: the renders go back to
    pending and are retried later (with backoff) or elsewhere.
    """
    try:
        jobs = store()
        info = jobs.get(job_id)
    except RedisError as exc:  # nothing claimed yet
        raise retry(self, exc, retry_delay(self.request.retries)) from None
    if info is None:
        return {"ignored": "job not found"}
    beat = heartbeat(self.request.hostname or "worker")
    owner = beat.owner
    storage = open_storage(info.location, settings)
    claimed: list[Held] = []
    ready: list[tuple[Any, Held]] = []
    ignored: list[dict[str, Any]] = []
    try:
        for spec in jobs.specs(job_id, render_ids):
            state = jobs.state(job_id, spec.id) or {}
            dead = known_dead(state.get("owner", "")) if state.get("status") == "running" else ""
            claim = jobs.claim(
                job_id,
                spec.id,
                owner,
                settings.worker_timeout,
                MAX_CRASHES,
                dead_owner=dead,
                task=self.request.id or "",
            )
            if claim.outcome == "gave_up":
                log.warning("render %s: its worker died %d times; failed", spec.id, MAX_CRASHES)
                settle(app, job_id, claim.complete)
                continue
            if claim.outcome != "claimed":
                ignored.append({"render": spec.id, "why": claim.outcome, "detail": claim.detail})
                continue
            held = Held(job_id, spec.id, claim.attempt, owner)
            claimed.append(held)
            beat.hold(held)
            if claim.crashes:
                log.warning("render %s: its worker died (%d time(s))", spec.id, claim.crashes)
            if info.cancelled:
                _end(held, "cancelled", error="job cancelled")
                continue
            prior = earlier(storage, spec)
            if prior is not None:  # keep what the job that made it measured
                try:
                    complete_copies(storage, spec, CONTENT_TYPES[info.meta["format"]])
                except StorageError as exc:
                    if isinstance(exc, TransientError):
                        raise
                    _end(held, "failed", error=f"copies not written: {exc}")
                    continue
                made_by = prior.pop("job")
                # Decided from facts, the output's own record of who wrote it: this very job
                # (an earlier attempt cut off before it could say so, or one whose end a
                # failover lost) made it: done, its cost counted now; a job before this one
                # made it: skipped, at no cost here.
                if made_by == job_id:
                    _end(held, "done", error=None, rendered_by=made_by, outputs=len(spec.keys),
                         **prior)  # fmt: skip
                else:
                    _end(held, "skipped", error=None, rendered_by=made_by, **prior)
                continue
            ready.append((spec, held))
        if not ready:
            return {"rendered": [], "ignored": ignored}
        result = _render(self, info, ready, storage, size, beat)
        _device_errors[0] = 0
        return {**result, "ignored": ignored}
    except (TransientError, RedisError, OperationalError) as exc:
        _release(claimed, owner)
        delay = retry_delay(self.request.retries)
        log.warning(
            "transient failure, retry %d in %.0f s: %s", self.request.retries + 1, delay, exc
        )
        raise retry(self, exc, delay) from None
    except Superseded:
        log.warning("job %s: every render of this task was taken over; stopped", job_id)
        return {"rendered": [], "superseded": [h.render_id for h in claimed]}
    except ConfigError as exc:
        return _misconfigured(job_id, claimed, owner, beat, exc)
    except DeviceError as exc:
        return _device_failed(job_id, claimed, owner, beat, exc)
    except BaseException:
        _release(claimed, owner)  # whatever went wrong, nothing stays held
        raise
    finally:
        beat.drop(claimed)


def _release(claimed: list[Held], owner: str) -> list[str]:
    """Hand back what this task still holds (a no-op for renders it already ended); returns
    those handed back. Redis away: the watchdog frees them once the heartbeat stops listing
    them."""
    back = []
    for held in claimed:
        try:
            if store().release(held, owner) == "released":
                back.append(held.render_id)
        except RedisError as exc:
            log.warning("render %s not handed back (%s); the watchdog will", held.render_id, exc)
    return back


def _misconfigured(
    job_id: str, claimed: list[Held], owner: str, beat: Heartbeat, exc: ConfigError
) -> dict[str, Any]:
    """This worker cannot render anything: hand the renders back (not counted against them),
    report the reason in the heartbeat, and step aside; another worker takes them."""
    again = _release(claimed, owner)
    beat.unhealthy(f"configuration: {exc}")
    redrive(job_id, again, store(), app, settings)
    _step_aside(f"configuration: {exc}", EXIT_MISCONFIGURED)
    return {"rendered": [], "misconfigured": str(exc), "handed_back": again}


def _device_failed(
    job_id: str, claimed: list[Held], owner: str, beat: Heartbeat, exc: DeviceError
) -> dict[str, Any]:
    """Hand the renders back (retried elsewhere, not counted against them); a render that
    met device errors on MAX_DEVICE_RETRIES tries fails; after ``max_device_errors`` in a row,
    report this process unhealthy and step aside."""
    jobs = store()
    _device_errors[0] += 1
    again = []
    for held in claimed:
        outcome = jobs.release(held, owner, True, MAX_DEVICE_RETRIES, str(exc))
        if outcome == "released":
            again.append(held.render_id)
        settle(app, job_id, outcome)
    log.error("device error (%d in a row): %s", _device_errors[0], exc)
    sick = _device_errors[0] >= settings.max_device_errors
    if sick:
        beat.unhealthy(f"{_device_errors[0]} device errors in a row: {exc}")
    redrive(job_id, again, jobs, app, settings)
    if sick:
        _step_aside(str(exc))
    return {"rendered": [], "device_error": str(exc), "handed_back": again, "sick": sick}


def _render(task, info, ready, storage, size, beat: Heartbeat) -> dict[str, Any]:
    job_id = info.job_id
    last = [0.0]
    specs = [spec for spec, _ in ready]
    held_of = {spec.id: held for spec, held in ready}

    plan = schedule(specs[0].params, parse_size(specs[0].size).long)
    work = [n * side * side for side, n in plan]  # each scale's share of the render's work
    began = time.monotonic()

    def on_step(scale: int, scales: int, iteration: int, iterations: int) -> None:
        if not any(beat.holds(h) for h in held_of.values()):
            raise Superseded  # the heartbeat learnt that newer attempts have them all
        now = time.monotonic()
        if now - last[0] >= 1.0 or iteration == iterations:
            last[0] = now
            done = sum(work[:scale]) + work[min(scale, len(work) - 1)] * iteration / iterations
            fraction = min(1.0, done / max(1, sum(work)))
            eta = (now - began) * (1 - fraction) / fraction if fraction > 0 else None
            progress = {
                "job": job_id,
                "renders": [s.id for s in specs],
                "size": size,
                "scale": scale + 1,
                "scales": scales,
                "iteration": iteration,
                "iterations": iterations,
                "eta_seconds": round(eta, 1) if eta is not None else None,
            }
            line = f"scale {scale + 1}/{scales}, iteration {iteration}/{iterations}"
            line += f", eta {eta:.0f} s" if eta is not None else ""
            try:  # progress is for people: Redis away must not fail the render
                task.update_state(state="PROGRESS", meta=progress)
                # a custom task event: Flower shows it on the task's page (state PROGRESS, and
                # the line as the task's result until it ends); custom states send no event
                task.send_event("task-progress", result=line, progress=progress)
            except (RedisError, OperationalError, OSError) as exc:
                log.warning("progress not reported: %s", exc)

    def may_write(render: Any) -> bool:
        """Only while this attempt holds the render: checked in Redis just before the write
        (the conditional PUT guards the rest of the window)."""
        held = held_of[render.id]
        return beat.holds(held) and store().holds(held, beat.owner)

    weights = info.meta["weights"]
    r = renderer(weights, specs[0].identities.get(weights, ""))
    fmt, quality = info.meta["format"], int(info.meta["quality"])
    written: list[Any] = []
    try:
        signed = settings.signs(info.meta.get("credentials"))
        outcomes = r.render_batch(
            specs, storage, job_id, fmt, quality, on_step, signed, may_write, written
        )
    except SoftTimeLimitExceeded:
        limit = (limits_for(task.request.kwargs.get("work")) or ("?",))[0]
        result = _record(task, info, r, written, held_of)
        recorded = {o.render.id for o in written}
        missing = [s for s in specs if s.id not in recorded]
        names = ", ".join(o.render.key for o in written if o.status == "done") or "none"
        for spec in missing:  # written all the same? then done: an output is a fact
            found, why = _written(storage, spec)
            if found is not None:
                found.pop("job", None)
                _end(held_of[spec.id], "done", error=None, rendered_by=job_id,
                     outputs=len(spec.keys), **found)  # fmt: skip
                result["rendered"].append(info.location.uri_of(spec.key))
                continue
            _end(
                held_of[spec.id],
                "failed",
                error=f"soft time limit ({limit} s) exceeded; no output written for this "
                f"render{why} (outputs written by its task: {names})",
            )
            result["failed"].append({"render": spec.id, "error": "soft time limit"})
        return result
    return _record(task, info, r, outcomes, held_of)


def _written(storage: Any, spec: Any) -> tuple[dict[str, Any] | None, str]:
    """Whether a render's output is there with its id (what its making measured), looked at
    in the time left before the hard limit; ('', why not) where it cannot be told."""
    try:
        return earlier(storage, spec), ""
    except Exception as exc:  # S3 slow or away even now: the errback looks again
        return None, f" (its output could not be checked: {type(exc).__name__})"


def _record(task, info, r, outcomes, held_of) -> dict[str, Any]:
    """Record each outcome from the attempt that holds its render."""
    result: dict[str, Any] = {"rendered": [], "failed": [], "superseded": []}
    for outcome in outcomes:
        if outcome.status == "superseded":
            result["superseded"].append(outcome.render.id)
            continue
        ok = outcome.status == "done"
        held = held_of[outcome.render.id]
        _end(
            held,
            outcome.status,
            seconds=outcome.seconds,
            error=outcome.error,
            losses=outcome.losses,
            device=outcome.device,
            pixel_iterations=outcome.pixel_iterations,
            worker=task.request.hostname,
            weights_id=r.weights_id if ok else None,
            outputs=len(outcome.render.keys),  # its own and its copies': counted in the cost
        )
        if ok:
            result["rendered"].append(info.location.uri_of(outcome.render.key))
        else:
            result["failed"].append({"render": outcome.render.id, "error": outcome.error})
    return result
