"""Cron slots: when a scheduled manifest is due, computed from a clock that callers pass in
(so tests drive time instead of waiting).

A cron is read in its time zone's wall-clock time; each slot is a UTC instant. Daylight-saving
changes (croniter's own time-zone arithmetic gets them wrong, so it only walks naive wall-clock
times here and the mapping to instants is done below):

- a cron with a fixed hour (``30 1 * * *``, ``0 */6 * * *``) fires once per wall-clock time: a
  time repeated in autumn fires at its first occurrence only; a time skipped in spring fires
  once at the first valid minute after the gap (``30 2 * * *`` in Berlin: 03:00 CEST);
- a cron whose hour field is ``*`` (``*/15 * * * *``, ``0 * * * *``) fires at every real
  instant whose local time matches: both passes of a repeated hour, nothing for the skipped
  hour (the hour after it has its own slots), so it keeps firing every real hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_REACH = 27  # hours: more than any UTC offset change, so offsets sampled this far bound a slot


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


def _every_hour(cron: str) -> bool:
    """Whether a cron matches every hour (hour field ``*``): its slots are instants, not a
    wall-clock time of day."""
    fields = _ALIASES.get(cron.strip().lower(), cron).split()
    return len(fields) > 1 and fields[1] in ("*", "*/1")


def _offsets(zone: ZoneInfo, at: datetime) -> tuple[timedelta, timedelta]:
    """The smallest and largest UTC offset of ``zone`` within a day and a bit of ``at``
    (sampled hourly: no offset lasts under an hour)."""
    found = [
        offset
        for k in range(-_REACH, _REACH + 1)
        if (offset := (at + timedelta(hours=k)).astimezone(zone).utcoffset()) is not None
    ]
    return min(found), max(found)


def _gap_end(lo: datetime, hi: datetime, zone: ZoneInfo) -> datetime:
    """The instant of the transition between ``lo`` (before it) and ``hi`` (after it): the
    first valid local time after a skipped one, e.g. 03:00 after 02:00-02:59 in spring."""
    before = lo.astimezone(zone).utcoffset()
    second = timedelta(seconds=1)
    while hi - lo > second:
        mid = lo + ((hi - lo) // second // 2) * second
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


def _instants(wall: datetime, zone: ZoneInfo, every_hour: bool) -> list[datetime]:
    """The UTC slots of one local wall-clock time (naive) matched by a cron.

    A repeated time (autumn) is one slot, its first occurrence, for a cron with a fixed hour,
    and both for one that runs every hour; a skipped time (spring) is one slot at the first
    valid minute after the gap for a cron with a fixed hour, and none for one that runs every
    hour (its next real hour is a slot of its own)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # repeated: fold 0 comes first
        return [first, second] if every_hour else [first]
    return [] if every_hour else [_gap_end(min(first, second), max(first, second), zone)]


def latest_slot(cron: str, timezone: str, now: datetime) -> datetime:
    """The most recent slot at or before ``now``, in UTC."""
    zone, every_hour = ZoneInfo(timezone), _every_hour(cron)
    now = now.astimezone(UTC)
    naive = now.replace(tzinfo=None)
    # No wall time later than now plus the largest offset about now has a slot at or before it.
    walls = croniter(cron, naive + _offsets(zone, now)[1] + timedelta(microseconds=1))
    best: datetime | None = None
    floor = timedelta(0)
    while True:
        wall = walls.get_prev(datetime)
        if best is not None and wall < best.replace(tzinfo=None) + floor:
            return best  # earlier wall times all fall before the best slot found
        for slot in _instants(wall, zone, every_hour):
            if slot <= now and (best is None or slot > best):
                best, floor = slot, _offsets(zone, slot)[0]


def next_slot(cron: str, timezone: str, now: datetime) -> datetime:
    """The first slot after ``now``, in UTC."""
    zone, every_hour = ZoneInfo(timezone), _every_hour(cron)
    now = now.astimezone(UTC)
    naive = now.replace(tzinfo=None)
    # No wall time earlier than now plus the smallest offset about now has a slot after it.
    walls = croniter(cron, naive + _offsets(zone, now)[0] - timedelta(microseconds=1))
    best: datetime | None = None
    ceiling = timedelta(0)
    while True:
        wall = walls.get_next(datetime)
        if best is not None and wall > best.replace(tzinfo=None) + ceiling:
            return best  # later wall times all fall after the best slot found
        for slot in _instants(wall, zone, every_hour):
            if slot > now and (best is None or slot < best):
                best, ceiling = slot, _offsets(zone, slot)[1]


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
