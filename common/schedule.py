"""Cron slots: when a scheduled manifest is due, computed from a clock that callers pass in
(so tests drive time instead of waiting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter


def check(cron: str, timezone: str) -> None:
    """ValueError naming everything wrong with a cron expression and time zone, together."""
    problems = []
    if not croniter.is_valid(cron):
        problems.append(f"invalid cron expression {cron!r} (five fields: min hour day month dow)")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"unknown time zone {timezone!r} (use an IANA name, e.g. Europe/Berlin)")
    if problems:
        raise ValueError("; ".join(problems))


def latest_slot(cron: str, timezone: str, now: datetime) -> datetime:
    """The most recent slot at or before ``now``, in UTC."""
    local = now.astimezone(ZoneInfo(timezone)) + timedelta(microseconds=1)
    return croniter(cron, local).get_prev(datetime).astimezone(UTC)


def next_slot(cron: str, timezone: str, now: datetime) -> datetime:
    local = now.astimezone(ZoneInfo(timezone))
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def slot_label(slot: datetime) -> str:
    """A slot as it appears in job ids and output keys, e.g. 20261127T010000Z."""
    return slot.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_slot(text: str) -> datetime:
    """An ISO 8601 time (naive means UTC) or a slot label."""
    try:
        value = datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"invalid slot time {text!r} (ISO 8601, e.g. 2026-11-27T02:00:00Z)"
            ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
