"""``stylebatch run``: a whole job in this process, on local files or S3, no queue needed."""

from __future__ import annotations

import time
from collections.abc import Callable

from common.errors import InputError
from common.expand import ENGINE_VERSION, JobPlan, Render
from common.imageio import CONTENT_TYPES
from common.report import publish, write_summary
from common.settings import Settings
from common.storage import open_storage
from common.summary import Summary
from workers.copies import complete_copies
from workers.render import Outcome, Renderer, batches, earlier


def run_local(
    plan: JobPlan,
    settings: Settings,
    device: str = "auto",
    on_outcome: Callable[[Outcome], None] | None = None,
    on_step: Callable[[int, int, int, int], None] | None = None,
    on_start: Callable[[list[Render]], None] | None = None,
) -> Summary:
    """Render every unfinished render of ``plan``; write outputs, summary and contact sheet.

    Interrupted (Ctrl-C) or crashed, it leaves only whole outputs and a summary of what was
    done; a rerun skips the finished renders.
    """
    storage = open_storage(plan.location, settings)
    summary = Summary.of(plan)
    summary.engine = ENGINE_VERSION
    records = {record.id: record for record in summary.renders}
    renderer = Renderer(settings, plan.weights, device)

    def record(outcome: Outcome) -> None:
        rec = records[outcome.render.id]
        rec.status, rec.seconds, rec.error = outcome.status, outcome.seconds, outcome.error
        rec.losses = outcome.losses
        rec.device, rec.pixel_iterations = outcome.device, outcome.pixel_iterations or None
        if outcome.status == "done":
            rec.weights_id = renderer.weights_id
        if on_outcome:
            on_outcome(outcome)

    todo = []
    for render in plan.renders:
        prior = earlier(storage, render)
        if prior is None:
            todo.append(render)
            continue
        complete_copies(storage, render, CONTENT_TYPES[plan.format])
        record(Outcome(render, "skipped", prior["seconds"] or 0.0, None, prior["losses"]))
        rec = records[render.id]  # what the run that made it measured
        rec.seconds, rec.weights_id, rec.rendered_by = (
            prior["seconds"],
            prior["weights_id"],
            prior["job"],
        )
    if todo:
        renderer.engine  # noqa: B018 - weights that cannot be loaded fail the run up front
    if on_start:
        on_start(todo)
    try:
        ready = []
        for render in todo:
            try:
                renderer.shape_of(render)
                for uri, _ in render.style_images:
                    renderer.image(render, uri)
                ready.append(render)
            except InputError as exc:
                record(Outcome(render, "failed", 0.0, str(exc)))
        for group in batches(ready, renderer.shape_of):
            for outcome in renderer.render_batch(
                group,
                storage,
                plan.job_id,
                plan.format,
                plan.manifest.output.quality,
                on_step,
                settings.signs(plan.manifest.output.credentials),
            ):
                record(outcome)
            write_summary(storage, summary)
    except BaseException:
        summary.finished = time.time()
        write_summary(storage, summary)
        raise
    summary.finished = time.time()
    publish(storage, summary, settings)
    return summary
