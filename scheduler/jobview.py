"""What a job looks like from outside: its counts by state, ETA, cost, failures with their
reasons and webhook outcome. One place, shared by `stylebatch status --json`, `jobs --json`
and the web front's API and pages (scheduler/web), so they state the same facts. Each reads
the job's record and at most ``FAILURES`` of its renders: the cost does not grow with the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
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
        "review": info.review(),
        "parent": info.meta.get("parent") or None,
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


SLOT_IN_ID = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]{12}$")
STATUS_FILTERS = ("running", "finalizing", "done", "failed", "cancelled", "succeeded", "partial")


@dataclass(frozen=True)
class JobQuery:
    """What the jobs list is filtered by: part of the name or id (``q``), a status (or an
    outcome: succeeded, partial), a schedule's name (its slots' jobs), and when it was made
    (``since`` and ``until``: UTC dates, inclusive)."""

    q: str = ""
    status: str = ""
    schedule: str = ""
    since: str = ""
    until: str = ""

    def bounds(self) -> tuple[float, float]:
        """(first, last) creation time, Unix seconds; ValueError for a date not YYYY-MM-DD."""
        first = _day(self.since) if self.since else float("-inf")
        last = _day(self.until) + 86400 if self.until else float("inf")
        return first, last

    def matches(self, info: JobInfo) -> bool:
        meta = info.meta
        if self.q and self.q.lower() not in f"{meta.get('name', '')} {info.job_id}".lower():
            return False
        if self.status and self.status not in (info.status, info.outcome):
            return False
        if self.schedule:
            slot = meta.get("slot") or (m.group(1) if (m := SLOT_IN_ID.search(info.job_id)) else "")
            if not slot or meta.get("name") != self.schedule:
                return False
        first, last = self.bounds()
        created = float(meta.get("created") or 0)
        return first <= created < last

    def given(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def _day(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
