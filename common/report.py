"""A job's own files beside its outputs. Each job (so each scheduled slot, whose job id names
the slot) keeps its summary and contact sheet under ``_jobs/<job id>/``, which no later job
writes; ``summary.json`` and ``contact_sheet.png`` at the top are copies of the latest."""

from __future__ import annotations

from collections.abc import Callable

from common.contact_sheet import sheet_for
from common.expand import RECORDS, RESERVED_KEYS
from common.settings import Settings
from common.storage import Storage
from common.summary import Summary

SUMMARY_KEY, SHEET_KEY = RESERVED_KEYS
COST_KEY = "cost.csv"  # per job only, under _jobs/<job id>/


def record_key(job_id: str, name: str) -> str:
    """Where a job's own copy of ``name`` (summary.json, contact_sheet.png) lives."""
    return f"{RECORDS}/{job_id}/{name}"


def write_summary(storage: Storage, summary: Summary) -> None:
    data, meta = summary.to_json(), {"job": summary.job_id}
    storage.put(record_key(summary.job_id, SUMMARY_KEY), data, "application/json", meta)
    storage.put(SUMMARY_KEY, data, "application/json", meta)


STEPS = ("summary", "sheet", "cost")


def publish(
    storage: Storage,
    summary: Summary,
    settings: Settings,
    done: frozenset[str] = frozenset(),
    mark: Callable[[str], object] = lambda step: None,
) -> None:
    """The final summary, contact sheet and cost table (whole objects, so re-publishing is
    safe), step by step: a step in ``done`` is skipped, and ``mark`` is told each step as it
    completes, so a finalize cut short (a slow store, its time limit) resumes where it
    stopped instead of starting over."""
    meta = {"job": summary.job_id}
    if "summary" not in done:
        write_summary(storage, summary)
        mark("summary")
    if "sheet" not in done:
        sheet = sheet_for(summary, storage, settings)
        storage.put(record_key(summary.job_id, SHEET_KEY), sheet, "image/png", meta)
        storage.put(SHEET_KEY, sheet, "image/png", meta)
        mark("sheet")
    if "cost" not in done:
        costs = summary.cost_csv()
        storage.put(record_key(summary.job_id, COST_KEY), costs, "text/csv", meta)
        mark("cost")
