"""Schedules' slots with a controlled clock, no Redis: the latest and next slot in a time zone,
bad schedules named, and daylight-saving changes (beat against a real Redis:
tests/integration/test_beat.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from common.errors import ManifestError
from common.expand import plan_job
from common.schedule import latest_slot, next_slot, parse_slot, slot_label
from tests.support.manifests import local_settings, tiny_manifest, write_manifest
from tests.support.times import T0, utc


def test_latest_slot_in_a_time_zone():
    assert latest_slot("0 2 * * *", "Europe/Berlin", T0) == datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert latest_slot("0 2 * * *", "UTC", T0) == datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    exact = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
    assert latest_slot("0 2 * * *", "Europe/Berlin", exact) == exact
    assert slot_label(exact) == "20261127T010000Z" and parse_slot("20261127T010000Z") == exact
    assert parse_slot("2026-11-27T02:00:00+01:00") == exact


@pytest.mark.parametrize(("schedule", "fragment"), [
    ({"cron": "61 * * * *"}, "invalid cron expression"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus"}, "unknown time zone"),
])  # fmt: skip
def test_bad_schedules(tmp_path, images, schedule, fragment):
    data = tiny_manifest(images, tmp_path / "out")
    data["schedule"] = schedule
    with pytest.raises(ManifestError) as info:
        plan_job(write_manifest(tmp_path, data), local_settings())
    assert any(p.where == "schedule" and fragment in p.message for p in info.value.problems)


# Daylight-saving changes: a fixed wall-clock time fires once (a repeated one at its first
# occurrence, a skipped one at the first valid minute after the gap); a cron whose hour field
# is '*' fires at every real instant that matches, so every real hour.


def chain(cron, tz, start, end):
    """Slots after ``start`` up to ``end``, by next_slot, checked against latest_slot."""
    slots, t = [], start
    while (t := next_slot(cron, tz, t)) <= end:
        assert latest_slot(cron, tz, t) == t
        if slots:  # between two slots, the latest is the earlier one
            assert latest_slot(cron, tz, t - timedelta(seconds=1)) == slots[-1]
            assert latest_slot(cron, tz, slots[-1] + (t - slots[-1]) / 2) == slots[-1]
        slots.append(t)
    return slots


@pytest.mark.parametrize(("cron", "tz", "start", "expected"), [
    # autumn: 02:00 Berlin is 00:00Z (CEST) and again 01:00Z (CET): once, at the first
    ("0 2 * * *", "Europe/Berlin", utc(10, 24, 12), [utc(10, 25, 0), utc(10, 26, 1)]),
    # autumn: 01:30 New York is 05:30Z (EDT) and again 06:30Z (EST)
    ("30 1 * * *", "America/New_York", utc(10, 31, 12), [utc(11, 1, 5, 30), utc(11, 2, 6, 30)]),
    # spring: 02:30 Berlin does not exist: 03:00 CEST (01:00Z) instead
    ("30 2 * * *", "Europe/Berlin", utc(3, 28, 0),
     [utc(3, 28, 1, 30), utc(3, 29, 1), utc(3, 30, 0, 30)]),
    # spring: 02:30 New York does not exist: 03:00 EDT (07:00Z) instead
    ("30 2 * * *", "America/New_York", utc(3, 7, 0),
     [utc(3, 7, 7, 30), utc(3, 8, 7), utc(3, 9, 6, 30)]),
    # every hour, also in the repeated hour, and the real hour after the skipped one
    ("0 * * * *", "Europe/Berlin", utc(10, 24, 22, 30),
     [utc(10, 24, 23), utc(10, 25, 0), utc(10, 25, 1), utc(10, 25, 2)]),
    ("0 * * * *", "Europe/Berlin", utc(3, 28, 23, 30),
     [utc(3, 29, 0), utc(3, 29, 1), utc(3, 29, 2)]),
    ("0 * * * *", "America/New_York", utc(11, 1, 4, 30),
     [utc(11, 1, 5), utc(11, 1, 6), utc(11, 1, 7)]),
    ("0 * * * *", "America/New_York", utc(3, 8, 5, 30),
     [utc(3, 8, 6), utc(3, 8, 7), utc(3, 8, 8)]),
])  # fmt: skip
def test_slots_across_daylight_saving_changes(cron, tz, start, expected):
    assert chain(cron, tz, start, expected[-1]) == expected


@pytest.mark.parametrize(("tz", "day", "hours"), [
    ("Europe/Berlin", (10, 25), 25), ("Europe/Berlin", (3, 29), 23),
    ("America/New_York", (11, 1), 25), ("America/New_York", (3, 8), 23),
])  # fmt: skip
def test_quarter_hourly_keeps_every_real_quarter_hour(tz, day, hours):
    from zoneinfo import ZoneInfo

    midnight = datetime(2026, *day, tzinfo=ZoneInfo(tz)).astimezone(UTC)
    end = datetime(2026, *day, tzinfo=ZoneInfo(tz)) + timedelta(days=1)
    slots = chain("*/15 * * * *", tz, midnight - timedelta(seconds=1), end.astimezone(UTC))
    assert len(slots) == hours * 4 + 1  # the local day, both midnights included
    assert {b - a for a, b in pairwise(slots)} == {timedelta(minutes=15)}
