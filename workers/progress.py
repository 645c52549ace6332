"""A local run with a live progress bar: renders done, and the scale being optimised."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.expand import JobPlan, Render
from common.settings import Settings
from common.summary import Summary
from workers.local import run_local
from workers.render import Outcome


def run_with_progress(plan: JobPlan, settings: Settings, device: str, console: Console) -> Summary:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        renders = bar.add_task("renders", total=len(plan.renders))
        scale = bar.add_task("  scale", total=1, visible=False)

        def on_start(todo: list[Render]) -> None:
            bar.update(scale, visible=bool(todo))

        def on_outcome(outcome: Outcome) -> None:
            bar.advance(renders)

        def on_step(index: int, count: int, iteration: int, iterations: int) -> None:
            bar.update(
                scale,
                description=f"  scale {index + 1}/{count}",
                completed=iteration,
                total=iterations,
            )

        summary = run_local(plan, settings, device, on_outcome, on_step, on_start)
        bar.update(scale, visible=False)
    return summary
