"""Services: the processes of the fleet, each checked against Redis and its object-store keys
before it starts (exit 4 naming the setting): `worker` (render workers and bookkeeping),
`beat`, `flower`, `metrics` and `serve`. This is the composition root: the one place where
the control plane starts the render workers' code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from common.settings import Settings
from scheduler.cli.common import (
    EXIT_INVALID,
    app,
    err,
    out,
    queue,
)


def worker_commands(
    gpus: list[str],
    host: str | None = None,
    loglevel: str = "INFO",
    cpu_workers: int = 1,
    bookkeeping: bool = True,
    settings: Settings | None = None,
) -> list[tuple[list[str], dict[str, str]]]:
    """Every process `stylebatch worker` starts: the render workers (workers/launch.py, each
    with its share of the CPUs as STYLEBATCH_TORCH_THREADS) and the bookkeeping worker
    (scheduler/bookkeeping/), as (argv, extra environment)."""
    from scheduler import bookkeeping as books
    from workers.launch import render_commands

    commands = render_commands(gpus, host, loglevel, cpu_workers, settings)
    return [*commands, books.command(host, loglevel)] if bookkeeping else commands


BindOpt = Annotated[
    str, typer.Option(metavar="ADDRESS", help="Address to listen on (keep it private).")
]


@app.command()
def metrics(
    bind: BindOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port for /metrics.")] = 9808,
) -> None:
    """Serve the fleet's Prometheus metrics: queues, renders, render times, device-seconds,
    live workers, stuck jobs, failures. Basic auth when STYLEBATCH_METRICS_AUTH=user:password."""
    from scheduler.metrics import serve

    auth = Settings.from_env().metrics_auth
    user, _, password = auth.partition(":")
    if auth and not (user and password):
        err.print("[red]STYLEBATCH_METRICS_AUTH: set it to user:password, both non-empty[/]")
        raise typer.Exit(EXIT_INVALID)
    _startup(object_store=False)
    settings, _, store = queue()
    serve(store, settings, bind, port, auth)


@app.command()
def serve(
    bind: BindOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port of the API and pages.")] = 8080,
) -> None:
    """The web front: an HTTP API (OpenAPI at /openapi.json) and pages to submit, watch and
    review jobs, for the teams of STYLEBATCH_WEB_TEAMS (docs/web.md). Never imports torch."""
    from common.errors import ConfigError
    from common.queue import EXIT_MISCONFIGURED
    from common.teams import load_teams

    settings = Settings.from_env()
    try:
        if not load_teams(settings.web_teams, settings):
            raise ConfigError("STYLEBATCH_WEB_TEAMS: no team is set, so no one could use it")
    except ConfigError as exc:
        err.print(f"cannot start: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_MISCONFIGURED) from None
    _startup(object_store=True)
    from scheduler.web.app import serve as serve_web

    serve_web(settings, bind, port)


def _startup(object_store: bool) -> None:
    """Before a service starts: exit 4 with one line naming the setting when Redis refuses or
    does not answer, or the object store refuses this service's keys (common/startup.py)."""
    from common.errors import ConfigError
    from common.queue import EXIT_MISCONFIGURED
    from common.startup import check_services

    try:
        check_services(Settings.from_env(), object_store)
    except ConfigError as exc:
        err.print(f"cannot start: {exc}", style="red", markup=False, highlight=False)
        raise typer.Exit(EXIT_MISCONFIGURED) from None


def _celery(*args: str, env: dict[str, str] | None = None) -> None:
    """Replace this process with ``celery -A common.celery_app ARGS`` (signals reach celery)."""
    import os

    argv = [sys.executable, "-m", "celery", "-A", "common.celery_app", *args]
    os.execve(sys.executable, argv, {**os.environ, **(env or {})})


@app.command()
def beat(
    schedules: Annotated[
        str,
        typer.Option(
            metavar="SOURCE",
            envvar="STYLEBATCH_SCHEDULES",
            help="Folder or s3:// prefix of manifests with a schedule.",
        ),
    ],
    loglevel: Annotated[str, typer.Option(metavar="LEVEL")] = "INFO",
) -> None:
    """Fire scheduled manifests (Celery beat); picks up manifest changes without a restart."""
    _startup(object_store=True)
    _celery(
        "beat",
        "--scheduler",
        "scheduler.beat:ManifestScheduler",
        f"--loglevel={loglevel}",
        env={"STYLEBATCH_SCHEDULES": schedules},
    )


@app.command()
def flower(
    port: Annotated[int, typer.Option(metavar="PORT")] = 5555,
    address: Annotated[str, typer.Option(metavar="ADDRESS")] = "127.0.0.1",
    db: Annotated[
        str,
        typer.Option(
            metavar="PATH",
            envvar="STYLEBATCH_FLOWER_DB",
            help="Where Flower keeps its state across restarts.",
        ),
    ] = "flower.db",
    max_tasks: Annotated[
        int, typer.Option(metavar="N", help="Tasks Flower keeps in memory (the oldest go).")
    ] = 20000,
) -> None:
    """Run Flower against the fleet, with basic auth from STYLEBATCH_FLOWER_USER and
    STYLEBATCH_FLOWER_PASSWORD (required: Flower shows every job). Its state is saved to
    --db every minute and at shutdown, and read back at start; its task-runtime histogram
    has buckets from 0.1 s to 3 h, as renders take."""
    import os

    settings = Settings.from_env()
    user, password = settings.flower_user, settings.flower_password
    if not user or not password:
        err.print("[red]set STYLEBATCH_FLOWER_USER and STYLEBATCH_FLOWER_PASSWORD[/]")
        raise typer.Exit(EXIT_INVALID)
    _startup(object_store=False)  # Flower holds no object-store keys
    # Passed through the environment, so the password is not on a command line. /metrics
    # asks for the same credentials (scheduler/flower_auth.py).
    from common.state import RENDER_SECONDS_BUCKETS

    buckets = ",".join(map(str, RENDER_SECONDS_BUCKETS))
    argv = [
        sys.executable,
        "-m",
        "scheduler.flower_auth",
        f"--port={port}",
        f"--address={address}",
        "--persistent=True",
        f"--db={db}",
        "--state_save_interval=60000",
        f"--max_tasks={max_tasks}",
        f"--task_runtime_metric_buckets={buckets}",
    ]
    os.execve(sys.executable, argv, {**os.environ, "FLOWER_BASIC_AUTH": f"{user}:{password}"})


@app.command()
def worker(
    cpu_workers: Annotated[
        int, typer.Option(metavar="N", help="CPU workers where there is no GPU.")
    ] = 1,
    renders: Annotated[bool, typer.Option(help="Run render workers (GPU or CPU).")] = True,
    bookkeeping: Annotated[bool, typer.Option(help="Also run the bookkeeping worker.")] = True,
    loglevel: Annotated[str, typer.Option(metavar="LEVEL")] = "INFO",
) -> None:
    """Start one worker per GPU (or CPU workers), plus a bookkeeping worker."""
    from common.gpus import visible_gpus
    from workers.launch import run_workers

    gpus = visible_gpus() if renders else []
    commands = worker_commands(gpus, None, loglevel, cpu_workers if renders else 0, bookkeeping)
    if not commands:
        err.print("[red]nothing to run: --no-renders and --no-bookkeeping[/]")
        raise typer.Exit(EXIT_INVALID)
    _startup(object_store=True)
    out.print(
        f"starting {len(commands)} worker process(es): "
        f"{', '.join(argv[argv.index('-n') + 1] for argv, _ in commands)}"
    )
    raise typer.Exit(run_workers(commands))
