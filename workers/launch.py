"""``stylebatch worker``'s render workers: one Celery worker process per GPU (pinned with
CUDA_VISIBLE_DEVICES), or CPU workers, and the supervision of every process it starts
(bookkeeping's too). Nothing here imports torch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from common.queue import EXIT_MISCONFIGURED, EXIT_SICK, RENDER_QUEUE, torch_threads, worker_argv
from common.settings import Settings

Command = tuple[list[str], dict[str, str]]


def render_commands(
    gpus: list[str],
    host: str | None = None,
    loglevel: str = "INFO",
    cpu_workers: int = 1,
    settings: Settings | None = None,
) -> list[Command]:
    """(argv, extra environment) for each render worker process: one per GPU, pinned with
    CUDA_VISIBLE_DEVICES, or ``cpu_workers`` CPU workers where there is none. Each gets its
    share of this machine's CPUs as STYLEBATCH_TORCH_THREADS (what was set there stays), so
    N processes do not each start a thread per core."""
    host = host or socket.gethostname()
    settings = settings or Settings.from_env()
    renderers = len(gpus) or cpu_workers
    threads = {"STYLEBATCH_TORCH_THREADS": str(torch_threads(settings, max(1, renderers)))}
    base = [*worker_argv("workers.tasks", loglevel), "-Q", RENDER_QUEUE, "-c", "1"]
    if gpus:
        return [
            (
                [*base, "-n", f"gpu{gpu}@{host}"],
                {"CUDA_VISIBLE_DEVICES": gpu, "STYLEBATCH_DEVICE": "cuda", **threads},
            )
            for gpu in gpus
        ]
    return [
        (
            [*base, "-n", f"cpu{i}@{host}"],
            {"STYLEBATCH_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", **threads},
        )
        for i in range(cpu_workers)
    ]


def run_workers(commands: list[Command]) -> int:
    """Start every worker; forward SIGTERM/SIGINT; return when all have exited. A render
    worker that stepped aside (its device failed: exit status 3; its configuration is broken:
    4) stops the others too, and this returns that status, so the orchestrator restarts the
    whole unit (and an operator sees which). So does any worker that dies unasked (a
    non-zero status: kombu gives up on a Redis fault, the kernel kills it): the unit would
    otherwise go on short of it, with nothing to restart it."""
    procs = [subprocess.Popen(argv, env={**os.environ, **env}) for argv, env in commands]

    asked = []  # a signal came: the workers' exits are expected

    def forward(signum, _frame):
        asked.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    died = None  # the status of the first worker that exited unasked (128 + a signal's)

    def first_death() -> int | None:
        code = next((p.returncode for p in procs if p.returncode not in (None, 0)), None)
        return None if code is None else (128 - code if code < 0 else code)

    while any(proc.poll() is None for proc in procs):
        if died is None and not asked:
            died = first_death()
            if died is not None:
                forward(signal.SIGTERM, None)  # warm: running renders finish
        time.sleep(0.5)
    if died is None and not asked:  # a lone worker, or all of them within one look
        died = first_death()
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    codes = [proc.returncode for proc in procs]
    for status in (EXIT_MISCONFIGURED, EXIT_SICK):
        if status in codes:
            return status
    return died if died is not None else max(codes, default=0)
