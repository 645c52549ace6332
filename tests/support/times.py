"""Instants of 2026 in UTC, which the schedules' tests name their slots by."""

from __future__ import annotations

from datetime import UTC, datetime

T0 = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)  # 02:30 in Berlin


def utc(month, day, hour, minute=0):
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)
