"""What an output says about the render that made it: its render id, the job that wrote it
and what making it measured (local files embed the whole record; S3 objects carry it as flat
metadata). Done and skipped are decided from this fact, by the render workers and by
bookkeeping alike."""

from __future__ import annotations

import json
from typing import Any

from common.expand import Render
from common.storage import Storage


def earlier(storage: Storage, render: Render) -> dict[str, Any] | None:
    """The record of this very render's existing output (same id), or None: the job that
    made it, its seconds, losses and weights id."""
    return measured(storage.metadata(render.key), render.id)


def measured(meta: dict[str, Any] | None, render_id: str) -> dict[str, Any] | None:
    """What an output of ``render_id`` says its making measured, or None if it is not one.
    Local files embed the whole record; S3 objects carry it as flat metadata."""
    if not meta or meta.get("render_id", meta.get("render-id")) != render_id:
        return None
    if "render-id" in meta:
        try:
            losses = json.loads(meta.get("losses") or "null")
            seconds = float(meta["seconds"]) if meta.get("seconds") else None
        except ValueError:
            losses = seconds = None
        meta = {"job": meta.get("job"), "weights_id": meta.get("weights-id")} | {
            "seconds": seconds,
            "losses": losses,
        }
    return {k: meta.get(k) for k in ("job", "seconds", "losses", "weights_id")}
