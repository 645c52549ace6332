"""What a job looks like from outside: its counts by state, ETA, cost, failures with their
reasons and webhook outcome. One place, shared by `stylebatch status --json`, `jobs --json`
and the web front's API and pages (scheduler/web), so they state the same facts. Each reads
the job's record and at most ``FAILURES`` of its renders: the cost does not grow with the job.
"""

from __future__ import annotations

from typing import Any

from common.state import JobInfo, JobStore

FAILURES = 50  # failed renders named, at most


def counts(info: JobInfo) -> dict[str, int]:
    return {
        "pending": info.pending,
        "running": info.running,
        "done": info.count("done"),
        "skipped": info.count("skipped"),
        "failed": info.count("failed"),
        "cancelled": info.count("cancelled"),
    }


def eta(info: JobInfo, now: float) -> float | None:
    """Seconds until the job's renders have all ended, at the rate they have ended so far
    (None for an ended job, or before its first render ends)."""
    if info.terminal or "created" not in info.meta:
        return None
    ended = info.total - info.pending - info.running
    elapsed = now - float(info.meta["created"])
    if ended <= 0 or elapsed <= 0:
        return None
    return round((info.total - ended) * elapsed / ended, 1)


def duration(seconds: float | None) -> str:
    """A time span as people read it: "42 s", "17 min", "3.5 h" ("-" for none)."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def job_record(info: JobInfo) -> dict[str, Any]:
    """One line of `stylebatch jobs --json`."""
    return {
        "job": info.job_id,
        "name": info.meta.get("name"),
        "status": info.status,
        "outcome": info.outcome,
        "headline": info.headline,
        "cancel_requested": info.cancelled,
        "reason": info.meta.get("reason"),
        "total": info.total,
        "outputs_planned": int(info.meta.get("outputs") or info.total),
        **counts(info),
        "created": float(info.meta["created"]) if "created" in info.meta else None,
        "finished": float(info.meta["finished"]) if "finished" in info.meta else None,
        "cost": info.cost(),
    }


def facets(info: JobInfo) -> dict[str, Any]:
    """The job's styles, sizes (or channels) and how many contents, as its record keeps them
    (the pages' filters); {} for a job recorded before they were."""
    import json

    try:
        found = json.loads(info.meta.get("facets") or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def failures(store: JobStore, info: JobInfo, limit: int = FAILURES) -> list[dict[str, Any]]:
    """Up to ``limit`` failed renders: id, content, style, size and the error."""
    if not info.count("failed"):
        return []
    ids = store.failed(info.job_id, limit)
    specs = {r.id: r for r in store.specs(info.job_id, ids)}
    out = []
    for rid in ids:
        state = store.state(info.job_id, rid) or {}
        spec = specs.get(rid)
        where = {"content": spec.content_name, "style": spec.style, "size": spec.size}
        out.append({"render": rid, **(where if spec else {}), "error": state.get("error")})
    return out


def status_record(store: JobStore, info: JobInfo) -> dict[str, Any]:
    """`stylebatch status --json`, less ``timed_out`` (which only --watch knows)."""
    record = job_record(info) | {"output": str(info.location)}
    record["cost"] = info.cost()
    record["eta_seconds"] = eta(info, store.now())
    record["webhook_status"] = info.meta.get("webhook_status")
    record["failures"] = failures(store, info)
    record["blocked"] = None if info.terminal else store.out_of_memory()
    return record
