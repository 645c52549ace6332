"""A render's copies: style names of one manifest that resolve to the same render (the same
images, parameters and size) share one making, and its output is written to each of their
keys as well (common/expand.py). Every copy carries the render's id, like its output, so a
copy is recognised, skipped and rewritten by the same rules; the render's cost is counted
once, its files each once (common/summary.py)."""

from __future__ import annotations

from typing import Any

from common.expand import Render
from common.storage import Storage, render_id_of


def write_copies(
    storage: Storage, render: Render, data: bytes, content_type: str, metadata: dict[str, str]
) -> None:
    """The render's output, just made, at each of its copies' keys (unless one is there
    already, with this render's id)."""
    for key in render.keys[1:]:
        storage.put_output(key, data, content_type, metadata, render.id)


def complete_copies(storage: Storage, render: Render, content_type: str) -> int:
    """An output made earlier (its render skipped now): its copies written where they are
    missing or another render's, from the output itself. Returns how many were written."""
    missing = [k for k in render.keys[1:] if render_id_of(storage.metadata(k)) != render.id]
    if not missing:
        return 0
    data = storage.get(render.key)
    if data is None:
        return 0  # the output went meanwhile: the render is not skipped next time
    meta: Any = storage.metadata(render.key) or {}
    flat = {k: v for k, v in meta.items() if isinstance(v, str)}  # S3's own metadata
    for key in missing:
        storage.put_output(key, data, content_type, flat, render.id)
    return len(missing)
