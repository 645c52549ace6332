"""What every command of the command line shares: the Typer app, its consoles and exit
codes, and reading a manifest through the intake (scheduler/intake.py) with the exits a
person or a script reads: 2 invalid, 3 cannot be checked here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.errors import ManifestError, StylebatchError
from common.expand import JobPlan
from common.settings import Settings

HELP = """stylebatch: neural style transfer in bulk. A manifest names content images, styles, sizes
and where the outputs go; workers render it on GPUs (or CPUs), with a summary, a contact sheet
and the cost of each job beside the outputs.

\b
Start with:
  stylebatch run examples/demo.yaml --weights random   render a job here, no Redis or S3
  stylebatch validate campaign.yaml                    check a manifest and its inputs
  stylebatch submit campaign.yaml                      send it to the fleet; then status JOB
"""

app = typer.Typer(
    name="stylebatch",
    add_completion=False,
    no_args_is_help=True,
    help=HELP,
    rich_markup_mode=None,  # click's plain help: no <bool>/<int> type tags, nothing read as markup
)
out = Console()
err = Console(stderr=True)

EXIT_INVALID = 2  # the manifest, an argument or a preflight check is wrong; nothing was done
EXIT_FAILED = 1  # the job ran and some renders failed, or the job failed
EXIT_TIMEOUT = 124  # status --watch --timeout ran out before the job ended
EXIT_UNCHECKED = 3  # the manifest could not be checked here (no S3 credentials, S3 away)
EXIT_INTERRUPTED = 130
EXIT_MISCONFIGURED = 4  # Redis would lose the job (it evicts keys): nothing was done
EXIT_BUSY = 75  # another submit of the same job holds it now; run again (sysexits' TEMPFAIL)
EXIT_BLOCKED = 5  # the job cannot move now: Redis is out of memory (status says why)

ManifestArg = Annotated[Path, typer.Argument(help="Job manifest (YAML or JSON).")]
JobArg = Annotated[str, typer.Argument(help="Job id (from submit or `stylebatch jobs`).")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        metavar="WEIGHTS",
        help="VGG19 weights: imagenet, a .pth file, an s3:// URI, or random[:SEED] "
        "(untrained, on purpose). Default: the manifest's, else STYLEBATCH_WEIGHTS.",
    ),
]


def plan_or_exit(
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
        problems_exit("invalid manifest", exc.source, exc.problems)
    except Refused as exc:
        problems_exit(exc.title, exc.source, exc.problems)
    except Unchecked as exc:  # the environment, not the manifest
        err.print(f"{manifest}: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_UNCHECKED) from None
    except StylebatchError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None


def problems_exit(title: str, source: str, problems: list) -> None:
    err.print(f"[bold red]{title}[/] {source}", highlight=False)
    for problem in problems:
        err.print(f"  - {problem}", highlight=False, markup=False)
    raise typer.Exit(EXIT_INVALID)


def preflight_or_exit(plan: JobPlan, settings: Settings, source: Path) -> None:
    """The output location, then every problem that would fail renders, before anything is
    enqueued: exit 2 listing them; exit 3 when the checks cannot be made now (S3 away)."""
    from scheduler.intake import Refused, Submitter, Unchecked, check

    try:
        check(plan, Submitter(settings))
    except Refused as exc:
        problems_exit(exc.title, str(source), exc.problems)
    except Unchecked as exc:  # the environment, not the manifest: nothing was done
        err.print(f"{source}: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_UNCHECKED) from None


def print_plan(plan: JobPlan) -> None:
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
    print_weights(plan.weights)


def print_weights(weights: str) -> None:
    if weights.startswith("random"):
        out.print(
            f"[bold yellow]weights: {weights} - UNTRAINED random VGG19 weights, chosen "
            "explicitly; results show texture, not a painter's style.[/]"
        )
    else:
        out.print(f"weights: {weights}", highlight=False)


def confine_location(location: str, source: Path) -> None:
    """Exit 2 if a manifest's output location is one this fleet must not write (settings
    alone: no network)."""
    from common.errors import Problem
    from common.uris import parse_location

    try:
        where = parse_location(location, source.resolve().parent)
    except ValueError as exc:
        problems_exit("invalid manifest", str(source), [Problem("output.location", str(exc))])
    settings = Settings.from_env() if where.scheme == "s3" else Settings.local_run()
    confine(where, settings, source)


def confine(location, settings: Settings, source: Path) -> None:
    """Exit 2 if the job's output location is one this fleet must not write."""
    from common.access import OutputRefused, check_output
    from common.errors import Problem

    try:
        check_output(str(location), settings)
    except OutputRefused as exc:
        problems_exit("output refused", str(source), [Problem("output.location", str(exc))])


def queue():
    from common.queue import make_app
    from common.state import JobStore

    settings = Settings.from_env()
    return (
        settings,
        make_app(settings),
        JobStore.from_settings(settings, retries=3),
    )


def job_or_exit(store, job_id: str):
    info = store.get(job_id)
    if info is None:
        err.print(f"[red]no such job:[/] {job_id}", highlight=False)
        raise typer.Exit(EXIT_INVALID)
    return info


def redis_fit_or_exit(store) -> None:
    """Exit 4 when Redis would evict the fleet's state (common/startup.py): a submit would
    say OK and the job be lost."""
    from common.errors import ConfigError
    from common.redis_client import describe
    from common.startup import check_memory_policy

    try:
        check_memory_policy(store, f"Redis {describe(Settings.from_env())}")
    except ConfigError as exc:
        err.print(f"not submitted: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_MISCONFIGURED) from None
