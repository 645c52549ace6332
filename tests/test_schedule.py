"""Scheduled manifests with a controlled clock: slots, missed-slot policy, reloads, and the
once-per-slot claim, against a real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from common.errors import ManifestError
from common.expand import plan_job
from common.jobs import JobStore
from common.queue import make_app
from common.schedule import latest_slot, parse_slot, slot_label
from common.settings import Settings
from scheduler.beat import ManifestScheduler
from scheduler.submit import submit
from tests.conftest import tiny_manifest, write_manifest

T0 = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)  # 02:30 in Berlin


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
        plan_job(write_manifest(tmp_path, data), Settings())
    assert any(p.where == "schedule" and fragment in p.message for p in info.value.problems)


class Recording(ManifestScheduler):
    """Records fires instead of sending them (what is sent is tested with real workers)."""

    def __init__(self, *args, **kwargs):
        self.fired: list[tuple[str, datetime]] = []
        super().__init__(*args, **kwargs)

    def fire(self, item, slot):
        self.fired.append((item.name, slot))
        return True


@pytest.fixture
def env(redis_server, monkeypatch):
    url = redis_server.url(db=3)
    monkeypatch.setenv("STYLEBATCH_REDIS_URL", url)
    store = JobStore.from_url(url)
    store.r.flushdb()
    return Settings.from_env(), store


def scheduled(images, folder, name, cron="0 2 * * *", tz="Europe/Berlin"):
    data = tiny_manifest(images, folder / "out")
    data["name"] = name
    data["schedule"] = {"cron": cron, "timezone": tz}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_slots_fire_once_missed_slots_fire_only_the_latest(tmp_path, images, env):
    settings, _ = env
    folder = tmp_path / "schedules"
    folder.mkdir()
    scheduled(images, folder, "nightly")
    now = [T0]
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    beat.tick()
    assert beat.fired == []  # first sight: the 02:00 slot had passed; start with the next one
    now[0] = T0 + timedelta(hours=23, minutes=31)  # 02:01 next day
    beat.tick()
    beat.tick()
    assert beat.fired == [("nightly", datetime(2026, 11, 28, 1, 0, tzinfo=UTC))]
    restarted = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    restarted.tick()
    assert restarted.fired == []  # a restarted beat does not fire the slot again
    now[0] = T0 + timedelta(days=4, hours=1)  # three slots missed while down
    restarted.tick()
    assert restarted.fired == [("nightly", datetime(2026, 12, 1, 1, 0, tzinfo=UTC))]


def test_manifests_added_changed_removed_without_restart(tmp_path, images, env):
    settings, _ = env
    folder = tmp_path / "schedules"
    folder.mkdir()
    now = [T0]
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    beat.tick()
    assert beat.manifests == {}
    path = scheduled(images, folder, "hourly", cron="0 * * * *", tz="UTC")
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    now[0] += timedelta(seconds=beat.reload_every)
    beat.tick()
    assert [m.cron for m in beat.manifests.values()] == ["0 * * * *"]
    scheduled(images, folder, "hourly", cron="30 * * * *", tz="UTC")
    import os

    os.utime(path, ns=(1, 1))  # a new version, whatever the file system's clock resolution
    now[0] += timedelta(seconds=beat.reload_every)
    beat.tick()
    assert [m.cron for m in beat.manifests.values()] == ["30 * * * *"]
    path.unlink()
    now[0] += timedelta(seconds=beat.reload_every)
    beat.tick()
    assert beat.manifests == {}


def test_submit_with_slot_claims_it_once(tmp_path, images, env):
    settings, store = env
    path = write_manifest(tmp_path, tiny_manifest(images, tmp_path / "out"))
    slot = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    app = make_app(settings)
    first = submit(plan_job(path, settings, "random", slot), settings, app, store)
    again = submit(plan_job(path, settings, "random", slot), settings, app, store)
    path.write_text(path.read_text().replace("seed: 0", "seed: 1") + "priority: 6\n")
    changed = submit(plan_job(path, settings, "random", slot), settings, app, store)
    assert first.created and not again.created and not changed.created
    assert first.job_id == again.job_id == changed.job_id  # the slot belongs to the first job
    assert "20261127T020000Z" in first.job_id
    other = submit(plan_job(path, settings, "random", slot + timedelta(days=1)), settings, app,
                   store)  # fmt: skip
    assert other.created and other.job_id != first.job_id


def test_two_sources_with_one_name_the_second_is_refused_naming_both(tmp_path, images, env, caplog):
    settings, _ = env
    folder = tmp_path / "schedules"
    folder.mkdir()
    first = scheduled(images, folder, "daily")
    now = [T0]
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    beat.tick()
    copy = folder / "daily-copy.yaml"
    copy.write_text(first.read_text().replace("0 2 * * *", "30 3 * * *"))
    now[0] += timedelta(seconds=beat.reload_every)
    with caplog.at_level("ERROR", logger="stylebatch.beat"):
        beat.tick()
    assert [m.source for m in beat.manifests.values()] == [str(first)]  # it keeps its slots
    [record] = [r for r in caplog.records if "schedule ignored" in r.getMessage()]
    assert str(copy) in record.getMessage() and str(first) in record.getMessage()
    first.unlink()  # once the name is free, the other takes it
    now[0] += timedelta(seconds=beat.reload_every)
    beat.tick()
    assert [m.source for m in beat.manifests.values()] == [str(copy)]
