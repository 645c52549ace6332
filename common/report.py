"""A job's own files beside its outputs. Each job (so each scheduled slot, whose job id names
the slot) keeps its summary and contact sheet under ``_jobs/<job id>/``, which no later job
writes; ``summary.json`` and ``contact_sheet.png`` at the top are copies of the latest."""

from __future__ import annotations

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


def publish(storage: Storage, summary: Summary, settings: Settings) -> None:
    """The final summary and the contact sheet (whole objects, so re-publishing is safe)."""
    write_summary(storage, summary)
    sheet = sheet_for(summary, storage, settings)
    storage.put(record_key(summary.job_id, SHEET_KEY), sheet, "image/png", {"job": summary.job_id})
    costs = summary.cost_csv()
    storage.put(record_key(summary.job_id, COST_KEY), costs, "text/csv", {"job": summary.job_id})
    storage.put(SHEET_KEY, sheet, "image/png", {"job": summary.job_id})
