"""Jobs on the fleet: `submit`, `status`, `jobs`, `cancel`, `retry`, `gc`, and `workers`
(the render processes and their heartbeats)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from scheduler import jobview
from scheduler.cli.common import (
    EXIT_BLOCKED,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_TIMEOUT,
    JobArg,
    ManifestArg,
    WeightsOpt,
    app,
    err,
    job_or_exit,
    out,
    plan_or_exit,
    preflight_or_exit,
    print_weights,
    queue,
    redis_fit_or_exit,
)


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
    from common.state import NotDurable, Running
    from scheduler.intake import Submitter
    from scheduler.intake import submit as submit_job

    try:
        slot_time = parse_slot(slot) if slot and slot != "auto" else None
    except ValueError as exc:
        err.print(f"[red]--slot:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    plan = plan_or_exit(manifest, weights, slot_time)
    if slot == "auto":
        from datetime import UTC, datetime

        from common.schedule import latest_slot

        schedule = plan.manifest.schedule
        if schedule is None:
            err.print("[red]--slot auto needs a manifest with a schedule[/]")
            raise typer.Exit(EXIT_INVALID)
        due = latest_slot(schedule.cron, schedule.timezone, datetime.now(UTC))
        plan = plan_or_exit(manifest, weights, due)
    settings, celery, store = queue()
    preflight_or_exit(plan, settings, manifest)
    redis_fit_or_exit(store)
    try:
        result = submit_job(plan, Submitter(settings), celery, store, force)
    except Running as exc:
        err.print(f"not submitted: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    except NotDurable as exc:  # recorded, but no replica holds it yet: nothing was sent
        err.print(
            f"not submitted yet: {exc} (Redis has no replica in step: a failover?); "
            "run this again in a few seconds",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(EXIT_BUSY) from None
    if result.created:
        out.print(
            f"submitted {result.job_id}: {result.renders} renders in {result.tasks} "
            f"tasks, enqueued in {result.seconds:.2f} s",
            highlight=False,
        )
    elif result.in_progress:  # not done here: scripts retry on this status
        err.print(
            f"being submitted {result.job_id}: another submit holds it, creating and "
            f"enqueueing it; if that submit died, its lease lapses in {result.wait:.0f} s: "
            "run this again then",
            highlight=False,
        )
        raise typer.Exit(EXIT_BUSY)
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
    print_weights(plan.weights)
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

    _, _, store = queue()
    info = job_or_exit(store, job)
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
                counts = jobview.counts(info)
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
    counts = jobview.counts(info)
    if as_json:
        import json

        from scheduler.jobview import status_record

        record = status_record(store, info)
        record["timed_out"] = timed_out
        print(json.dumps(record, indent=1))
        _status_exit(info, counts, timed_out, record["blocked"])
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
    eta = jobview.eta(info, store.now())
    if eta is not None:
        ended = info.total - counts["pending"] - counts["running"]
        rate = 60 * ended / max(1e-9, store.now() - float(info.meta["created"]))
        out.print(f"eta ~{jobview.duration(eta)} at {rate:.3g} renders/min so far", highlight=False)
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
    blocked = None if info.terminal else store.out_of_memory()
    if blocked:
        err.print(f"blocked: {blocked}", highlight=False, markup=False)
    _status_exit(info, counts, timed_out, blocked)


def _status_exit(info, counts: dict[str, int], timed_out: bool, blocked=None) -> None:
    if timed_out:
        raise typer.Exit(EXIT_TIMEOUT)
    if blocked:  # it cannot move: a script must not read this as running fine
        raise typer.Exit(EXIT_BLOCKED)
    if info.status == "failed" or counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


@app.command(name="workers")
def workers_(
    stale: Annotated[bool, typer.Option(help="Also list processes that stopped beating.")] = True,
) -> None:
    """Render worker processes: device, health, and seconds since their last heartbeat."""
    _, _, store = queue()
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

    _, _, store = queue()
    found = store.jobs(limit, offset)
    if as_json:
        print(json.dumps([jobview.job_record(info) for info in found], indent=1))
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
    STYLEBATCH_JOB_TTL); running jobs are never touched, nor ended ones whose webhook is
    still owed. Outputs and summaries stay."""
    _, _, store = queue()
    seconds = None if older_than_days is None else older_than_days * 86400
    freed = store.gc(seconds)
    kept = f"; kept {freed['owed']} whose webhook is still owed" if freed["owed"] else ""
    out.print(
        f"deleted {freed['jobs']} ended job(s), {freed['bytes'] / 1e6:.2f} MB; dropped "
        f"{freed['expired_ids']} expired id(s) from the job list{kept}",
        highlight=False,
    )


@app.command()
def cancel(job: JobArg) -> None:
    """Cancel a job: renders not yet started are skipped, even after a worker restart."""
    _, _, store = queue()
    info = job_or_exit(store, job)
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

    settings, celery, store = queue()
    job_or_exit(store, job)
    count = retry_failed(job, settings, celery, store)
    out.print(f"re-enqueued {count} failed render(s) of {job}", highlight=False)
