"""The ``stylebatch`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.errors import ManifestError, StylebatchError
from common.expand import JobPlan, plan_job
from common.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console()
err = Console(stderr=True)

EXIT_INVALID = 2  # the manifest or an argument is wrong; nothing was done
EXIT_FAILED = 1  # the job ran and some renders failed
EXIT_INTERRUPTED = 130

ManifestArg = Annotated[Path, typer.Argument(help="Job manifest (YAML or JSON).")]
WeightsOpt = Annotated[
    str | None,
    typer.Option(help="VGG19 weights: imagenet, a .pth file, an s3:// URI, or random[:SEED] "
                      "(untrained, on purpose). Default: the manifest's, else STYLEBATCH_WEIGHTS."),
]  # fmt: skip


def _plan(manifest: Path, weights: str | None) -> JobPlan:
    try:
        return plan_job(manifest, Settings.from_env(), weights)
    except ManifestError as exc:
        err.print(f"[bold red]invalid manifest[/] {exc.source}", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", highlight=False, markup=False)
        raise typer.Exit(EXIT_INVALID) from None


def _print_plan(plan: JobPlan) -> None:
    table = Table(title=f"job {plan.job_id}", show_lines=False)
    for column in ("style", "sizes", "preset", "renders"):
        table.add_column(column)
    by_style: dict[str, list] = {}
    for render in plan.renders:
        by_style.setdefault(render.style, []).append(render)
    for style, renders in by_style.items():
        sizes = sorted({r.size for r in renders})
        table.add_row(style, ", ".join(map(str, sizes)), renders[0].params["preset"],
                      str(len(renders)))  # fmt: skip
    out.print(table)
    contents = len({r.content for r in plan.renders})
    out.print(f"{len(plan.renders)} renders: {contents} content image(s) x "
              f"{len(by_style)} style(s); output {plan.location}", highlight=False)  # fmt: skip
    if plan.duplicates:
        out.print(f"{plan.duplicates} duplicate render(s) collapsed")
    _print_weights(plan.weights)


def _print_weights(weights: str) -> None:
    if weights.startswith("random"):
        out.print(f"[bold yellow]weights: {weights} - UNTRAINED random VGG19 weights, chosen "
                  "explicitly; results show texture, not a painter's style.[/]")  # fmt: skip
    else:
        out.print(f"weights: {weights}", highlight=False)


@app.command()
def validate(manifest: ManifestArg, weights: WeightsOpt = None) -> None:
    """Check a manifest and show what it expands to, or list every problem."""
    _print_plan(_plan(manifest, weights))


@app.command()
def run(
    manifest: ManifestArg,
    weights: WeightsOpt = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Render a whole job in this process (no Redis or S3 needed for local paths)."""
    plan = _plan(manifest, weights)
    _print_plan(plan)
    try:
        from workers.progress import run_with_progress
    except ImportError as exc:
        err.print(f"[red]`stylebatch run` needs the worker extra (torch): "
                  f"pip install 'stylebatch[worker]' ({exc})[/]")  # fmt: skip
        raise typer.Exit(EXIT_INVALID) from None
    try:
        summary = run_with_progress(plan, Settings.from_env(), device, out)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: finished outputs are kept; rerun to continue[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except StylebatchError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    counts = summary.counts()
    out.print(f"done {counts['done']}, skipped {counts['skipped']} (already rendered), "
              f"failed {counts['failed']}", highlight=False)  # fmt: skip
    for record in summary.renders:
        if record.status == "failed":
            err.print(f"  failed {record.content} x {record.style} @ {record.size}: "
                      f"{record.error}", highlight=False, markup=False)  # fmt: skip
    out.print(f"outputs:       {plan.location}\nsummary:       "
              f"{plan.location.uri_of('summary.json')}\ncontact sheet: "
              f"{plan.location.uri_of('contact_sheet.png')}", highlight=False)  # fmt: skip
    if counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
