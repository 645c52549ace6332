"""stylebatch: neural style transfer in bulk. A manifest names content images, styles, sizes
and where the outputs go; workers render it on GPUs (or CPUs), with a summary, a contact sheet
and the cost of each job beside the outputs.

\b
Start with:
  stylebatch run examples/demo.yaml --weights random   render a job here, no Redis or S3
  stylebatch validate campaign.yaml                    check a manifest and its inputs
  stylebatch submit campaign.yaml                      send it to the fleet; then status JOB
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.errors import ManifestError, StylebatchError
from common.expand import JobPlan
from common.report import record_key
from common.settings import Settings
from scheduler.jobview import counts as _counts
from scheduler.jobview import duration as _duration
from scheduler.jobview import eta as _eta
from scheduler.jobview import job_record as _job_record

app = typer.Typer(
    name="stylebatch",
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    rich_markup_mode=None,  # click's plain help: no <bool>/<int> type tags, nothing read as markup
)
out = Console()
err = Console(stderr=True)

EXIT_INVALID = 2  # the manifest, an argument or a preflight check is wrong; nothing was done
EXIT_FAILED = 1  # the job ran and some renders failed, or the job failed
EXIT_TIMEOUT = 124  # status --watch --timeout ran out before the job ended
EXIT_UNCHECKED = 3  # the manifest could not be checked here (no S3 credentials, S3 away)
EXIT_INTERRUPTED = 130

ManifestArg = Annotated[Path, typer.Argument(help="Job manifest (YAML or JSON).")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        metavar="WEIGHTS",
        help="VGG19 weights: imagenet, a .pth file, an s3:// URI, or random[:SEED] "
        "(untrained, on purpose). Default: the manifest's, else STYLEBATCH_WEIGHTS.",
    ),
]


def _plan(
    manifest: Path, weights: str | None, slot=None, settings: Settings | None = None
) -> JobPlan:
    """The manifest planned as the fleet's operator (scheduler/intake.py); exit 2 listing
    every problem, or 3 when it cannot be checked from here."""
    from common.manifest import load_document
    from scheduler.intake import Refused, Submitter, Unchecked, plan

    who = Submitter(settings or Settings.from_env())
    try:
        document = load_document(manifest)
        return plan(document, str(manifest), manifest.resolve().parent, who, weights, slot)
    except ManifestError as exc:  # the file itself: unreadable, not YAML or JSON
        _problems("invalid manifest", exc.source, exc.problems)
    except Refused as exc:
        _problems(exc.title, exc.source, exc.problems)
    except Unchecked as exc:  # the environment, not the manifest
        err.print(f"{manifest}: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_UNCHECKED) from None
    except StylebatchError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


def _problems(title: str, source: str, problems: list) -> None:
    err.print(f"[bold red]{title}[/] {source}", highlight=False)
    for problem in problems:
        err.print(f"  - {problem}", highlight=False, markup=False)
    raise typer.Exit(EXIT_INVALID)


def _preflight(plan: JobPlan, settings: Settings, source: Path) -> None:
    """The output location, then every problem that would fail renders, before anything is
    enqueued: exit 2 listing them; exit 3 when the checks cannot be made now (S3 away)."""
    from scheduler.intake import Refused, Submitter, Unchecked, check

    try:
        check(plan, Submitter(settings))
    except Refused as exc:
        _problems(exc.title, str(source), exc.problems)
    except Unchecked as exc:  # the environment, not the manifest: nothing was done
        err.print(f"{source}: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_UNCHECKED) from None


def _print_plan(plan: JobPlan) -> None:
    table = Table(title=f"job {plan.job_id}", show_lines=False)
    for column in ("style", "sizes", "preset", "renders"):
        table.add_column(column)
    by_style: dict[str, list] = {}
    for render in plan.renders:
        by_style.setdefault(render.style, []).append(render)
    for style, renders in by_style.items():
        sizes = sorted({r.size for r in renders}, key=lambda s: (isinstance(s, str), str(s)))
        table.add_row(
            style, ", ".join(map(str, sizes)), renders[0].params["preset"], str(len(renders))
        )
    out.print(table)
    contents = len({r.content for r in plan.renders})
    copies = sum(len(r.copies) for r in plan.renders)
    out.print(
        f"{len(plan.renders)} renders: {contents} content image(s) x "
        f"{len(by_style)} style(s); output {plan.location}",
        highlight=False,
    )
    if copies:
        names = len({s for r in plan.renders for s, _ in r.copies})
        out.print(
            f"{len(plan.renders) + copies} outputs: {copies} are copies ({names} style name(s) "
            "resolve to renders of other names: each renders once, its output written to "
            "every key)",
            highlight=False,
        )
    if plan.duplicates:
        out.print(
            f"{plan.duplicates} duplicate entr(y/ies) collapsed: the same render at the same key",
            highlight=False,
        )
    _print_weights(plan.weights)


def _print_weights(weights: str) -> None:
    if weights.startswith("random"):
        out.print(
            f"[bold yellow]weights: {weights} - UNTRAINED random VGG19 weights, chosen "
            "explicitly; results show texture, not a painter's style.[/]"
        )
    else:
        out.print(f"weights: {weights}", highlight=False)


def _local_settings() -> Settings:
    """`run` renders the user's own manifest on their own machine: local files may be read
    and written unless STYLEBATCH_ALLOWED_INPUTS / _OUTPUTS say otherwise (the fleet's own
    locations stay refused)."""
    import dataclasses
    import os

    settings = Settings.from_env()
    if "STYLEBATCH_ALLOWED_INPUTS" not in os.environ:
        settings = dataclasses.replace(settings, allowed_inputs=(*settings.allowed_inputs, "/"))
    if "STYLEBATCH_ALLOWED_OUTPUTS" not in os.environ:
        settings = dataclasses.replace(settings, allowed_outputs=(*settings.allowed_outputs, "/"))
    return settings


def _confine_location(location: str, source: Path) -> None:
    """Exit 2 if a manifest's output location is one this fleet must not write (settings
    alone: no network)."""
    from common.errors import Problem
    from common.uris import parse_location

    try:
        where = parse_location(location, source.resolve().parent)
    except ValueError as exc:
        _problems("invalid manifest", str(source), [Problem("output.location", str(exc))])
    settings = Settings.from_env() if where.scheme == "s3" else _local_settings()
    _confine(where, settings, source)


def _confine(location, settings: Settings, source: Path) -> None:
    """Exit 2 if the job's output location is one this fleet must not write."""
    from common.access import OutputRefused, check_output
    from common.errors import Problem

    try:
        check_output(str(location), settings)
    except OutputRefused as exc:
        _problems("output refused", str(source), [Problem("output.location", str(exc))])


@app.command()
def validate(
    manifest: ManifestArg,
    weights: WeightsOpt = None,
    offline: Annotated[
        bool, typer.Option(help="Check the manifest alone: no output, input or weights checks.")
    ] = False,
) -> None:
    """Check a manifest and show what it expands to, or list every problem: its structure,
    then every input (present, allowed, small enough), the output location and the weights.
    Exit 0 valid, 2 invalid, 3 when this machine cannot check it (no S3 credentials)."""
    import json

    from common.inputs import NO_CREDENTIALS, has_credentials
    from common.manifest import load_document, parse_manifest

    try:
        document = load_document(manifest)
        parsed = parse_manifest(document, str(manifest))
    except ManifestError as exc:
        if not offline:  # the full check below also names missing local inputs
            document = None
        else:
            _problems("invalid manifest", exc.source, exc.problems)
    if offline:
        _confine_location(parsed.output.location, manifest)
        if parsed.notify:
            from common.notify import check_webhook

            refused = check_webhook(parsed.notify.webhook, Settings.from_env())
            if refused:
                _problems("webhook refused", str(manifest), refused)
        sizes = {n for style in parsed.styles for n in parsed.params.merged(style.params).sizes}
        out.print(
            f"well-formed: {len(parsed.content)} content entries, {len(parsed.styles)} "
            f"style(s), {len(sizes)} size(s); inputs, output and weights not checked (--offline)",
            highlight=False,
        )
        return
    # A job on local files alone is one for `run`, which may read and write them; `submit`
    # checks again with the fleet's settings.
    fleet = Settings.from_env()
    on_s3 = "s3://" in json.dumps(document) or (weights or fleet.weights).startswith("s3://")
    settings = fleet if on_s3 else _local_settings()
    plan = _plan(manifest, weights, settings=settings)
    _print_plan(plan)
    _confine(plan.location, settings, manifest)  # before the credentials: settings alone
    if on_s3 and not has_credentials():
        err.print(f"{manifest}: cannot check the s3 output: {NO_CREDENTIALS}", highlight=False)
        raise typer.Exit(EXIT_UNCHECKED)
    _preflight(plan, settings, manifest)
    out.print("preflight: output writable, every input and the weights readable")


@app.command()
def run(
    manifest: ManifestArg,
    weights: WeightsOpt = None,
    device: Annotated[
        str, typer.Option(metavar="DEVICE", help="auto, cpu, cuda or cuda:N")
    ] = "auto",
) -> None:
    """Render a whole job in this process (no Redis or S3 needed for local paths)."""
    plan = _plan(manifest, weights, settings=_local_settings())
    _print_plan(plan)
    _confine(plan.location, _local_settings(), manifest)
    from scheduler.preflight import check_credentials

    problems = plan.problems + check_credentials(
        plan.manifest.output.credentials, _local_settings()
    )
    if problems:
        _problems("invalid inputs", str(manifest), problems)
    try:
        from workers.progress import run_with_progress
    except ImportError as exc:
        err.print(
            f"[red]`stylebatch run` needs the worker extra (torch): "
            f"pip install 'stylebatch[worker]' ({exc})[/]"
        )
        raise typer.Exit(EXIT_INVALID) from None
    from workers.engine import WeightsError

    try:
        summary = run_with_progress(plan, _local_settings(), device, out)
    except WeightsError as exc:
        err.print(f"[red]weights:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: finished outputs are kept; rerun to continue[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except StylebatchError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    counts = summary.counts()
    out.print(
        f"done {counts['done']}, skipped {counts['skipped']} (already rendered), "
        f"failed {counts['failed']}",
        highlight=False,
    )
    for record in summary.renders:
        if record.status == "failed":
            err.print(
                f"  failed {record.content} x {record.style} @ {record.size}: {record.error}",
                highlight=False,
                markup=False,
            )
    out.print(
        f"outputs:       {plan.location}\nsummary:       "
        f"{plan.location.uri_of(record_key(plan.job_id, 'summary.json'))}\ncontact sheet: "
        f"{plan.location.uri_of(record_key(plan.job_id, 'contact_sheet.png'))}",
        highlight=False,
    )
    if counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


# -- distributed ---------------------------------------------------------------------------

JobArg = Annotated[str, typer.Argument(help="Job id (from submit or `stylebatch jobs`).")]


def _queue():
    from common.queue import make_app
    from common.state import JobStore

    settings = Settings.from_env()
    return (
        settings,
        make_app(settings),
        JobStore.from_settings(settings, retries=3),
    )


def _job_or_exit(store, job_id: str):
    info = store.get(job_id)
    if info is None:
        err.print(f"[red]no such job:[/] {job_id}", highlight=False)
        raise typer.Exit(EXIT_INVALID)
    return info


@app.command()
def submit(
    manifest: ManifestArg,
    weights: WeightsOpt = None,
    force: Annotated[bool, typer.Option(help="Submit again even if this job exists.")] = False,
    slot: Annotated[
        str | None,
        typer.Option(
            metavar="TIME|auto",
            help="Cron slot time (ISO 8601), or 'auto' for the latest slot of the manifest's "
            "schedule: for plain cron or a Kubernetes CronJob, each slot is submitted once "
            "however often this runs.",
        ),
    ] = None,
) -> None:
    """Validate a manifest, record the job in Redis and enqueue its renders for the workers."""
    from common.schedule import parse_slot
    from scheduler.intake import Submitter
    from scheduler.intake import submit as submit_job

    try:
        slot_time = parse_slot(slot) if slot and slot != "auto" else None
    except ValueError as exc:
        err.print(f"[red]--slot:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    plan = _plan(manifest, weights, slot_time)
    if slot == "auto":
        from datetime import UTC, datetime

        from common.schedule import latest_slot

        schedule = plan.manifest.schedule
        if schedule is None:
            err.print("[red]--slot auto needs a manifest with a schedule[/]")
            raise typer.Exit(EXIT_INVALID)
        due = latest_slot(schedule.cron, schedule.timezone, datetime.now(UTC))
        plan = _plan(manifest, weights, due)
    settings, celery, store = _queue()
    _preflight(plan, settings, manifest)
    result = submit_job(plan, Submitter(settings), celery, store, force)
    if result.created:
        out.print(
            f"submitted {result.job_id}: {result.renders} renders in {result.tasks} "
            f"tasks, enqueued in {result.seconds:.2f} s",
            highlight=False,
        )
    elif result.in_progress:
        out.print(
            f"being submitted {result.job_id}: another submit is creating and enqueueing it",
            highlight=False,
        )
    elif result.tasks:
        out.print(
            f"exists {result.job_id}: re-enqueued its pending renders that had no task "
            f"({result.tasks} tasks)",
            highlight=False,
        )
    else:
        out.print(
            f"exists {result.job_id} (unchanged manifest; --force to submit again)", highlight=False
        )
    _print_weights(plan.weights)
    out.print(result.job_id, highlight=False)


@app.command()
def status(
    job: JobArg,
    watch: Annotated[
        bool, typer.Option(help="Show a live progress bar until the job ends.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS", help="With --watch: give up after this many seconds (exit 124)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object, for scripts (same exit codes).")
    ] = False,
) -> None:
    """Counts per state, and every failure with its reason. Exits 0 when the job is done with
    no failed render (or still running), 1 when renders failed or the job failed, 124 when
    --watch --timeout ran out first."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    _, _, store = _queue()
    info = _job_or_exit(store, job)
    timed_out = False
    if watch:
        deadline = None if timeout is None else time.monotonic() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=out,
            disable=as_json,
        ) as bar:
            task = bar.add_task(job, total=info.total)
            while True:
                info = store.get(job) or info
                counts = _counts(info)
                bar.update(
                    task,
                    completed=info.total - counts["pending"] - counts["running"],
                    description=f"{job} running {counts['running']} failed {counts['failed']}",
                )
                if info.terminal:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    break
                time.sleep(1)
    counts = _counts(info)
    if as_json:
        import json

        from scheduler.jobview import status_record

        record = status_record(store, info)
        record["timed_out"] = timed_out
        print(json.dumps(record, indent=1))
        _status_exit(info, counts, timed_out)
        return
    from scheduler.jobview import failures as failures_of

    failures = failures_of(store, info)
    out.print(
        f"job {job} ({info.meta['name']}): {info.headline}"
        + (" [cancel requested]" if info.cancelled else ""),
        highlight=False,
        markup=False,
    )
    if info.meta.get("reason"):
        out.print(f"  reason: {info.meta['reason']}", highlight=False, markup=False)
    out.print(
        "  ".join(f"{k} {v}" for k, v in counts.items()) + f"  total {info.total}", highlight=False
    )
    out.print(f"output {info.location}", highlight=False)
    eta = _eta(info, store.now())
    if eta is not None:
        ended = info.total - counts["pending"] - counts["running"]
        rate = 60 * ended / max(1e-9, store.now() - float(info.meta["created"]))
        out.print(f"eta ~{_duration(eta)} at {rate:.3g} renders/min so far", highlight=False)
    if info.meta.get("webhook_status"):
        out.print(f"webhook: {info.meta['webhook_status']}", highlight=False, markup=False)
    cost = info.cost()
    spent = ", ".join(f"{d} {s:.1f} s" for d, s in sorted(cost["device_seconds"].items()))
    out.print(
        f"cost: device-seconds {spent or '0'}; {cost['pixel_iterations']:.3g} pixel-iterations; "
        f"{cost['outputs']} output(s)",
        highlight=False,
        markup=False,
    )
    for failure in failures:
        what = (
            f"{failure['content']} x {failure['style']} @ {failure['size']}"
            if "style" in failure
            else failure["render"]
        )
        out.print(f"  failed {what}: {failure['error']}", highlight=False, markup=False)
    if timed_out:
        err.print(f"timed out after {timeout:g} s; job {job} is {info.status}", highlight=False)
    _status_exit(info, counts, timed_out)


def _status_exit(info, counts: dict[str, int], timed_out: bool) -> None:
    if timed_out:
        raise typer.Exit(EXIT_TIMEOUT)
    if info.status == "failed" or counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


@app.command(name="workers")
def workers_(
    stale: Annotated[bool, typer.Option(help="Also list processes that stopped beating.")] = True,
) -> None:
    """Render worker processes: device, health, and seconds since their last heartbeat."""
    _, _, store = _queue()
    table = Table()
    for column in ("process", "device", "health", "last beat"):
        table.add_column(column)
    for owner, info in sorted(store.workers().items()):
        health = "ok" if info.get("healthy", True) else f"UNHEALTHY: {info.get('reason', '')}"
        table.add_row(owner, str(info.get("device", "")), health, f"{info['age']:.0f} s ago")
    out.print(table)


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(metavar="N", help="How many, newest first.")] = 20,
    offset: Annotated[
        int, typer.Option(metavar="N", help="Skip this many newer jobs (paging).")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list, for scripts.")] = False,
) -> None:
    """Recent jobs and their progress, with full ids."""
    import json

    _, _, store = _queue()
    found = store.jobs(limit, offset)
    if as_json:
        print(json.dumps([_job_record(info) for info in found], indent=1))
        return
    table = Table()
    table.add_column("job", no_wrap=True, overflow="fold")
    for column in ("status", "total", "done", "skipped", "failed", "cancelled"):
        table.add_column(column)
    for info in found:
        table.add_row(
            info.job_id,
            info.status,
            str(info.total),
            *(str(info.count(s)) for s in ("done", "skipped", "failed", "cancelled")),
        )
    out.print(table)
    if len(found) == limit:
        out.print(f"more: stylebatch jobs --offset {offset + limit}", highlight=False)


@app.command()
def gc(
    older_than_days: Annotated[
        float | None,
        typer.Option(
            metavar="DAYS",
            help="Delete ended jobs finished this long ago (default STYLEBATCH_JOB_TTL).",
        ),
    ] = None,
) -> None:
    """Delete the state of ended jobs now (Redis also expires it by itself after
    STYLEBATCH_JOB_TTL); running jobs are never touched. Outputs and summaries stay."""
    _, _, store = _queue()
    seconds = None if older_than_days is None else older_than_days * 86400
    freed = store.gc(seconds)
    out.print(
        f"deleted {freed['jobs']} ended job(s), {freed['bytes'] / 1e6:.2f} MB; dropped "
        f"{freed['expired_ids']} expired id(s) from the job list",
        highlight=False,
    )


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
    import os

    from scheduler.metrics import serve

    auth = os.environ.get("STYLEBATCH_METRICS_AUTH", "")
    user, _, password = auth.partition(":")
    if auth and not (user and password):
        err.print("[red]STYLEBATCH_METRICS_AUTH: set it to user:password, both non-empty[/]")
        raise typer.Exit(EXIT_INVALID)
    _startup(object_store=False)
    settings, _, store = _queue()
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


@app.command()
def cancel(job: JobArg) -> None:
    """Cancel a job: renders not yet started are skipped, even after a worker restart."""
    _, _, store = _queue()
    info = _job_or_exit(store, job)
    outcome = store.cancel(job)
    if outcome == "requested":
        out.print(
            f"cancel requested for {job}: {info.pending} render(s) not yet started will be "
            "cancelled",
            highlight=False,
        )
        return
    why = (
        "every render has ended and the job is being finalized"
        if outcome == "finalizing"
        else f"the job has already ended ({info.status})"
    )
    err.print(f"not cancelled: {job}: {why}; nothing changed", highlight=False)
    raise typer.Exit(EXIT_INVALID)


@app.command()
def retry(job: JobArg) -> None:
    """Re-drive only the failed renders of a job."""
    from scheduler.submit import retry_failed

    settings, celery, store = _queue()
    _job_or_exit(store, job)
    count = retry_failed(job, settings, celery, store)
    out.print(f"re-enqueued {count} failed render(s) of {job}", highlight=False)


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
    """Replace this process with ``celery -A workers.tasks ARGS`` (signals reach celery)."""
    import os

    argv = [sys.executable, "-m", "celery", "-A", "workers.tasks", *args]
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

    user = os.environ.get("STYLEBATCH_FLOWER_USER", "")
    password = os.environ.get("STYLEBATCH_FLOWER_PASSWORD", "")
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
    from workers.launch import run_workers, visible_gpus, worker_commands

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


def main() -> None:
    """The console entry: an unreachable Redis or broker is a message, not a traceback."""
    import redis
    from kombu.exceptions import OperationalError

    try:
        app()
    except (redis.RedisError, OperationalError) as exc:
        url = Settings.from_env().redis_url
        safe = url.split("@")[-1] if "@" in url else url.split("//")[-1]
        err.print(f"[red]error:[/] Redis at {safe}: {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
