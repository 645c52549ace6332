"""The one batching rule: renders that can share one optimisation (one content at one size,
one parameter set, one set of weights: so one output shape), up to MAX_BATCH_PIXELS of output
at once. The submit side groups a job's renders into tasks by it (common/dispatch.py, sizes
from the manifest), and the render worker groups a task's renders into engine batches by it
again (workers/render.py, shapes from the decoded content): the same groups, so a task is one
batch unless a render of it failed to load."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from common.expand import Render
from common.queue import MAX_BATCH_PIXELS


def _json(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def batches(
    renders: Iterable[Render],
    pixels_of: Callable[[Render], int],
    max_pixels: int = MAX_BATCH_PIXELS,
) -> list[list[Render]]:
    """The renders grouped by what they share (content and its identity, size, parameters,
    weights: renders alike in all five can be optimised together), each group cut to at most
    ``max_pixels`` of output (``pixels_of`` one render's; at least one render a batch), in
    first-seen order."""
    groups: dict[tuple, list[Render]] = {}
    shared: dict[int, tuple[dict, str]] = {}  # id(params) -> (params, JSON): a plan's renders
    for render in renders:  # share their style's parameters; each is serialised once
        params = shared.get(id(render.params))
        if params is None:
            params = shared[id(render.params)] = (render.params, _json(render.params))
        content = render.content
        key = (content, render.identities.get(content, ""), render.size, params[1], render.weights)
        groups.setdefault(key, []).append(render)
    out = []
    for group in groups.values():
        per_batch = max(1, max_pixels // max(1, pixels_of(group[0])))
        out += [group[i : i + per_batch] for i in range(0, len(group), per_batch)]
    return out
