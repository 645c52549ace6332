"""Bookkeeping: the control plane's Celery worker, torch-free, in the scheduler image. It ends
jobs (finalize: summary, contact sheet, the end), delivers their webhooks (notify), fails the
renders of tasks that died (the render task's errback) and runs the watchdog (reaping dead
workers' renders, reconciling stalled jobs). `stylebatch worker --no-renders` starts it:
``celery -A scheduler.bookkeeping.tasks worker -Q bookkeeping``."""

from __future__ import annotations

import socket

from common.queue import BOOKKEEPING_QUEUE, worker_argv


def command(host: str | None = None, loglevel: str = "INFO") -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of the bookkeeping worker process (two threads of work: a
    finalize never waits behind a webhook's retries)."""
    host = host or socket.gethostname()
    argv = [*worker_argv("scheduler.bookkeeping.tasks", loglevel), "-Q", BOOKKEEPING_QUEUE]
    return [*argv, "-c", "2", "-n", f"bookkeeping@{host}"], {"CUDA_VISIBLE_DEVICES": ""}
