"""Scheduled manifests with a controlled clock against a real Redis: slots, missed-slot policy,
reloads, the once-per-slot claim, daylight-saving changes, and outages beat rides out (the
slots' arithmetic alone: tests/unit/test_schedule_slots.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
import yaml

from common.expand import plan_job
from common.queue import make_app
from common.settings import Settings
from common.state import JobStore
from scheduler.beat import ManifestScheduler
from scheduler.submit import submit
from tests.support.manifests import tiny_manifest, write_manifest
from tests.support.times import T0, utc


class Recording(ManifestScheduler):
    """Records fires instead of sending them (what is sent is tested with real workers)."""

    def __init__(self, *args, **kwargs):
        self.fired: list[tuple[str, datetime]] = []
        super().__init__(*args, **kwargs)

    def fire(self, item, slot):
        self.fired.append((item.name, slot))
        return True


@pytest.fixture
def env(redis_db, monkeypatch):
    monkeypatch.setenv("STYLEBATCH_REDIS_URL", redis_db)
    monkeypatch.setenv("STYLEBATCH_ALLOWED_INPUTS", "s3://,/")  # the tests' inputs are local
    store = JobStore.from_url(redis_db)
    return Settings.from_env(), store


def scheduled(images, folder, name, cron="0 2 * * *", tz="Europe/Berlin"):
    data = tiny_manifest(images, folder / "out")
    data["name"] = name
    data["schedule"] = {"cron": cron, "timezone": tz}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def nightly_beat(tmp_path, images, settings):
    """A folder with the nightly manifest, and a recording beat on it whose clock is now[0]."""
    folder = tmp_path / "schedules"
    folder.mkdir()
    scheduled(images, folder, "nightly")
    now = [T0]
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    return folder, now, beat


def test_slots_fire_once_missed_slots_fire_only_the_latest(tmp_path, images, env):
    settings, _ = env
    folder, now, beat = nightly_beat(tmp_path, images, settings)
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


# Daylight-saving changes: beat fires a fixed time once a day and an hourly cron every real hour.


@pytest.mark.parametrize(("tz", "fixed", "start", "expected"), [
    ("Europe/Berlin", "0 2 * * *", utc(10, 24, 12), [utc(10, 25, 0), utc(10, 26, 1)]),
    ("America/New_York", "30 1 * * *", utc(10, 31, 12), [utc(11, 1, 5, 30), utc(11, 2, 6, 30)]),
    ("Europe/Berlin", "30 2 * * *", utc(3, 28, 12), [utc(3, 29, 1), utc(3, 30, 0, 30)]),
    ("America/New_York", "30 2 * * *", utc(3, 7, 12), [utc(3, 8, 7), utc(3, 9, 6, 30)]),
])  # fmt: skip
def test_beat_across_daylight_saving_changes(tmp_path, images, env, tz, fixed, start, expected):
    """Beat ticking every 5 minutes for two days across a change fires the fixed time once a
    day and the hourly cron every real hour."""
    settings, _ = env
    folder = tmp_path / "schedules"
    folder.mkdir()
    scheduled(images, folder, "nightly", cron=fixed, tz=tz)
    scheduled(images, folder, "hourly", cron="0 * * * *", tz=tz)
    now = [start]
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    while now[0] < start + timedelta(days=2):
        beat.tick()
        now[0] += timedelta(minutes=5)
    assert [slot for name, slot in beat.fired if name == "nightly"] == expected
    hourly = [slot for name, slot in beat.fired if name == "hourly"]
    assert hourly == [start + timedelta(hours=h) for h in range(1, 48)]  # every real hour


# Outages: beat never dies on an S3 or Redis error.


def test_beat_survives_a_manifest_source_outage(tmp_path, images, env, monkeypatch, caplog):
    from botocore.exceptions import EndpointConnectionError

    from scheduler.beat import ManifestSource

    settings, _ = env
    folder = tmp_path / "schedules"
    folder.mkdir()
    scheduled(images, folder, "nightly")
    real_scan, calls, down = ManifestSource.scan, [], [0]

    def scan(self):
        calls.append(now[0])
        if down[0]:
            down[0] -= 1
            raise EndpointConnectionError(endpoint_url="http://s3.invalid:9000/schedules")
        return real_scan(self)

    monkeypatch.setattr(ManifestSource, "scan", scan)
    now = [T0]
    down[0] = 1  # S3 away when beat starts: it starts anyway, with nothing scheduled
    beat = Recording(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    assert beat.manifests == {}
    now[0] += timedelta(seconds=1)
    assert beat.tick() <= beat.retry_every and len(calls) == 1  # retried after retry_every
    now[0] = T0 + timedelta(seconds=beat.retry_every)
    beat.tick()
    assert [m.name for m in beat.manifests.values()] == ["nightly"] and beat.fired == []
    down[0] = 3  # S3 away again; the 02:00 slot of the next day comes during the outage
    now[0] = T0 + timedelta(hours=23, minutes=31)
    with caplog.at_level("WARNING", logger="stylebatch.beat"):
        assert beat.tick() == beat.retry_every
    assert "EndpointConnectionError" in caplog.text and "keeping 1 known" in caplog.text
    assert [m.name for m in beat.manifests.values()] == ["nightly"]  # the known one fires
    assert beat.fired == [("nightly", datetime(2026, 11, 28, 1, 0, tzinfo=UTC))]
    scans = len(calls)
    now[0] += timedelta(seconds=1)
    beat.tick()
    assert len(calls) == scans  # not rescanned at every tick: after retry_every
    for _ in range(3):
        now[0] += timedelta(seconds=beat.retry_every)
        beat.tick()
    assert down[0] == 0 and len(calls) == scans + 3  # two more failures, then back
    assert beat.tick() > beat.retry_every  # healthy again: back to the normal wait
    assert beat.fired == [("nightly", datetime(2026, 11, 28, 1, 0, tzinfo=UTC))]  # once


class FlakyRedis:
    """A Redis client whose get and set fail while ``failing`` names them."""

    def __init__(self, real):
        self.real, self.failing = real, []

    def __getattr__(self, name):
        method = getattr(self.real, name)
        if name not in ("get", "set"):
            return method

        def call(*args, **kwargs):
            if self.failing and self.failing[0] == name:
                self.failing.pop(0)
                raise redis.ConnectionError("Error 111 connecting to redis:6379. Refused.")
            return method(*args, **kwargs)

        return call


def test_beat_survives_redis_errors_on_slot_markers(tmp_path, images, env, caplog):
    settings, _ = env
    _, now, beat = nightly_beat(tmp_path, images, settings)
    from common.state import ReadOnly

    flaky = beat.store.r = FlakyRedis(beat.store.r)
    beat.store.q = ReadOnly(flaky)  # its reads too
    flaky.failing = ["set"]
    with caplog.at_level("WARNING", logger="stylebatch.beat"):
        assert beat.tick() == beat.retry_every  # the first-sight marker could not be set
    assert "Redis error on its marker" in caplog.text
    now[0] += timedelta(seconds=beat.retry_every)
    beat.tick()
    assert beat.fired == []  # first sight now: the slot had passed
    now[0] = T0 + timedelta(hours=23, minutes=31)  # the next 02:00 is due
    flaky.failing = ["set", "get"]  # Redis away for two ticks
    for _ in range(2):
        assert beat.tick() == beat.retry_every
        assert beat.fired == []
        now[0] += timedelta(seconds=beat.retry_every)
    beat.tick()
    now[0] += timedelta(seconds=beat.retry_every)
    beat.tick()
    assert beat.fired == [("nightly", datetime(2026, 11, 28, 1, 0, tzinfo=UTC))]  # once


class FakeS3:
    """The calls the output probe makes, answering with ``error`` (if any)."""

    def __init__(self):
        self.error, self.calls = None, 0

    def head_bucket(self, **kwargs):
        self.calls += 1
        if self.error is not None:
            raise self.error

    def put_object(self, **kwargs):
        pass

    delete_object = put_object


def test_a_transient_preflight_error_is_retried_a_permanent_one_skips(
    tmp_path, images, env, monkeypatch, caplog
):
    import typer
    from botocore.exceptions import ClientError, EndpointConnectionError

    import scheduler.preflight
    from scheduler.cli import common as cli

    monkeypatch.setenv("STYLEBATCH_ALLOWED_INPUTS", "/")
    settings = Settings.from_env()
    folder = tmp_path / "schedules"
    folder.mkdir()
    path = scheduled(images, folder, "nightly")
    data = yaml.safe_load(path.read_text())
    data["output"]["location"], data["weights"] = "s3://out-bucket/nightly", "random"
    path.write_text(yaml.safe_dump(data))
    s3 = FakeS3()
    monkeypatch.setattr(scheduler.preflight, "s3_client", lambda settings: s3)
    now = [T0]
    beat = ManifestScheduler(app=make_app(settings), source=str(folder), clock=lambda: now[0])
    beat.tick()  # first sight
    now[0] = T0 + timedelta(hours=23, minutes=31)
    slot = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)
    s3.error = EndpointConnectionError(endpoint_url="http://s3.invalid:9000/out-bucket")
    for _ in range(2):  # S3 away: the slot is tried again, not passed over
        with caplog.at_level("WARNING", logger="stylebatch.beat"):
            assert beat.tick() == beat.retry_every
        assert "will retry" in caplog.text and "S3 unreachable" in caplog.text
        assert beat._marker("nightly") < slot.timestamp()  # the marker stays before the slot
        now[0] += timedelta(seconds=beat.retry_every)
    with pytest.raises(typer.Exit) as info:  # submit and validate: exit 3, no traceback
        cli.preflight_or_exit(plan_job(path, settings), settings, path)
    assert info.value.exit_code == cli.EXIT_UNCHECKED
    tries = s3.calls
    s3.error = ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject")
    caplog.clear()
    with caplog.at_level("ERROR", logger="stylebatch.beat"):
        beat.tick()
    assert "not submitted" in caplog.text and "access denied" in caplog.text
    assert beat._marker("nightly") == slot.timestamp()  # permanent: the slot is passed over
    now[0] += timedelta(seconds=beat.retry_every)
    beat.tick()
    assert s3.calls == tries + 1  # and not tried again
