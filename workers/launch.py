"""``stylebatch worker``: one Celery worker process per GPU (pinned with CUDA_VISIBLE_DEVICES),
or one CPU worker, plus a light worker for bookkeeping. Nothing here imports torch."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from common.queue import (
    BOOKKEEPING_QUEUE,
    EXIT_MISCONFIGURED,
    EXIT_SICK,
    RENDER_QUEUE,
    torch_threads,
)
from common.settings import Settings


def visible_gpus() -> list[str]:
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [g for g in pinned.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


Command = tuple[list[str], dict[str, str]]


def worker_commands(
    gpus: list[str],
    host: str | None = None,
    loglevel: str = "INFO",
    cpu_workers: int = 1,
    bookkeeping: bool = True,
    settings: Settings | None = None,
) -> list[Command]:
    """(argv, extra environment) for each worker process to start. Each render process gets
    its share of this machine's CPUs as STYLEBATCH_TORCH_THREADS (what was set there stays),
    so N processes do not each start a thread per core."""
    host = host or socket.gethostname()
    settings = settings or Settings.from_env()
    renderers = len(gpus) or cpu_workers
    threads = {"STYLEBATCH_TORCH_THREADS": str(torch_threads(settings, max(1, renderers)))}
    base = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.tasks",
        "worker",
        "-E",
        f"--loglevel={loglevel}",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
    ]
    out = []
    for gpu in gpus:
        out.append(
            (
                [*base, "-Q", RENDER_QUEUE, "-c", "1", "-n", f"gpu{gpu}@{host}"],
                {"CUDA_VISIBLE_DEVICES": gpu, "STYLEBATCH_DEVICE": "cuda", **threads},
            )
        )
    if not gpus:
        for i in range(cpu_workers):
            out.append(
                (
                    [*base, "-Q", RENDER_QUEUE, "-c", "1", "-n", f"cpu{i}@{host}"],
                    {"STYLEBATCH_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", **threads},
                )
            )
    if bookkeeping:
        out.append(
            (
                [*base, "-Q", BOOKKEEPING_QUEUE, "-c", "2", "-n", f"bookkeeping@{host}"],
                {"CUDA_VISIBLE_DEVICES": ""},
            )
        )
    return out


def run_workers(commands: list[Command]) -> int:
    """Start every worker; forward SIGTERM/SIGINT; return when all have exited. A render
    worker that stepped aside (its device failed: exit status 3; its configuration is broken:
    4) stops the others too, and this returns that status, so the orchestrator restarts the
    whole unit (and an operator sees which)."""
    procs = [subprocess.Popen(argv, env={**os.environ, **env}) for argv, env in commands]

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    sick = False
    while any(proc.poll() is None for proc in procs):
        if not sick and any(p.returncode in (EXIT_SICK, EXIT_MISCONFIGURED) for p in procs):
            sick = True
            forward(signal.SIGTERM, None)  # warm: running renders finish
        time.sleep(0.5)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    codes = [proc.returncode for proc in procs]
    for status in (EXIT_MISCONFIGURED, EXIT_SICK):
        if status in codes:
            return status
    return max(codes, default=0)
