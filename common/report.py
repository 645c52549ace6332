"""A job's own files beside its outputs: summary.json and the contact sheet."""

from __future__ import annotations

from common.contact_sheet import sheet_for
from common.expand import RESERVED_KEYS
from common.settings import Settings
from common.storage import Storage
from common.summary import Summary

SUMMARY_KEY, SHEET_KEY = RESERVED_KEYS


def write_summary(storage: Storage, summary: Summary) -> None:
    storage.put(SUMMARY_KEY, summary.to_json(), "application/json", {"job": summary.job_id})


def publish(storage: Storage, summary: Summary, settings: Settings) -> None:
    """The final summary and the contact sheet (whole objects, so re-publishing is safe)."""
    write_summary(storage, summary)
    storage.put(SHEET_KEY, sheet_for(summary, storage, settings), "image/png", {})
