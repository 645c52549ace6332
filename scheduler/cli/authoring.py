"""Authoring: `validate` (what a manifest comes to, every problem with its path) and `run`
(a whole job in this process, on local files or S3, no queue)."""

from __future__ import annotations

from typing import Annotated

import typer

from common.errors import ManifestError, StylebatchError
from common.report import record_key
from common.settings import Settings
from scheduler.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_UNCHECKED,
    ManifestArg,
    WeightsOpt,
    app,
    confine,
    confine_location,
    err,
    out,
    plan_or_exit,
    preflight_or_exit,
    print_plan,
    problems_exit,
)


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
    from common.inputs import NO_CREDENTIALS, has_credentials
    from common.manifest import load_document, parse_manifest

    try:
        document = load_document(manifest)
        parsed = parse_manifest(document, str(manifest))
    except ManifestError as exc:
        if not offline:  # the full check below also names missing local inputs
            document = None
        else:
            problems_exit("invalid manifest", exc.source, exc.problems)
    if offline:
        confine_location(parsed.output.location, manifest)
        if parsed.notify:
            from common.notify import check_webhook

            refused = check_webhook(parsed.notify.webhook, Settings.from_env())
            if refused:
                problems_exit("webhook refused", str(manifest), refused)
        sizes = {n for style in parsed.styles for n in parsed.params.merged(style.params).sizes}
        out.print(
            f"well-formed: {len(parsed.content)} content entries, {len(parsed.styles)} "
            f"style(s), {len(sizes)} size(s); inputs, output and weights not checked (--offline)",
            highlight=False,
        )
        return
    from scheduler.intake import operator_settings

    fleet = Settings.from_env()
    settings = operator_settings(document, weights, fleet)  # the fleet's, or a local run's
    on_s3 = settings is fleet
    plan = plan_or_exit(manifest, weights, settings=settings)
    print_plan(plan)
    confine(plan.location, settings, manifest)  # before the credentials: settings alone
    if on_s3 and not has_credentials():
        err.print(f"{manifest}: cannot check the s3 output: {NO_CREDENTIALS}", highlight=False)
        raise typer.Exit(EXIT_UNCHECKED)
    preflight_or_exit(plan, settings, manifest)
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
    plan = plan_or_exit(manifest, weights, settings=Settings.local_run())
    print_plan(plan)
    confine(plan.location, Settings.local_run(), manifest)
    from scheduler.preflight import check_credentials

    problems = plan.problems + check_credentials(
        plan.manifest.output.credentials, Settings.local_run()
    )
    if problems:
        problems_exit("invalid inputs", str(manifest), problems)
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
        summary = run_with_progress(plan, Settings.local_run(), device, out)
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
