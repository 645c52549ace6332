"""Scheduled manifests: Celery beat with a scheduler that reads manifests from a folder or an
S3 prefix, notices added, changed and removed ones without a restart, and fires each cron slot.

Exactly once per slot: a fire for slot T submits the job whose id derives from the manifest
and T, after claiming (name, T) with SET NX in Redis; a second beat, a restarted beat or a
retried cron job finds the claim and submits nothing new (a retry of the same job only adds
what a failed attempt did not send). Beat fires in its own process and moves its marker past
T only once the job is submitted: a transient error (S3 or Redis away) leaves the marker, and
the slot is tried again at the next tick, for as long as the outage lasts.

Outages never stop beat: a rescan of the manifest source that fails (S3 unreachable, a folder
gone) keeps the schedules known so far, which go on firing, and is tried again after
``retry_every``; a manifest that cannot be read for a transient reason keeps its known version
until it can be. A Redis error reading or writing a slot marker skips that manifest for this
tick, and it is tried again after ``retry_every``; a slot submitted whose marker could not be
moved is fired again, and the slot's claim makes that submit nothing new.

Missed slots: only the latest fires. After downtime, the most recent slot that is due and
newer than the last fired one fires once; older missed slots are skipped. A manifest seen for
the first time starts with its next slot (no backfill).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from celery import beat
from kombu.exceptions import OperationalError

from common.errors import ConfigError, ManifestError, TransientError
from common.inputs import CannotCheck
from common.manifest import parse_manifest, read_document
from common.schedule import latest_slot, next_slot, slot_label
from common.settings import Settings
from common.state import JobStore, NotDurable
from common.storage import read_input, s3_client
from common.uris import is_s3, parse_s3

log = logging.getLogger("stylebatch.beat")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestSource:
    """Manifests in a local folder or under an S3 prefix, each with a version (mtime or ETag)."""

    def __init__(self, uri: str, settings: Settings):
        self.uri, self.settings = uri, settings

    def scan(self) -> dict[str, str]:
        if is_s3(self.uri):
            bucket, prefix = parse_s3(self.uri)
            client = s3_client(self.settings)
            found = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith(MANIFEST_SUFFIXES):
                        found[f"s3://{bucket}/{obj['Key']}"] = obj["ETag"]
            return found
        folder = Path(self.uri)
        return {
            str(p): str(p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*"))
            if p.suffix in MANIFEST_SUFFIXES and p.is_file()
        }


def load_manifest(source: str, settings: Settings) -> tuple[dict[str, Any], Path]:
    """A manifest document and the folder its relative paths are taken from."""
    if is_s3(source):
        text = read_input(source, settings).decode("utf-8")
        base = Path("/nonexistent-s3-manifest-folder")  # S3 manifests must use absolute URIs
    else:
        text, base = Path(source).read_text("utf-8"), Path(source).resolve().parent
    return read_document(text, source, as_json=source.endswith(".json")), base


@dataclass(frozen=True)
class Scheduled:
    source: str
    version: str
    name: str
    cron: str
    timezone: str


def fire_slot(source: str, slot: datetime, settings: Settings, app: Any, store: JobStore) -> str:
    """Submit the job of one slot (claimed atomically); returns its job id. Its inputs are
    identified now, so a shot replaced since the last slot renders again. A slot that would
    fail renders (a missing input, an unwritable output) is refused like an invalid manifest."""
    from scheduler.intake import Refused, Submitter, Unchecked, intake

    data, base = load_manifest(source, settings)
    try:
        _, submitted = intake(data, source, base, Submitter(settings), app, store, slot=slot)
    except Refused as exc:
        raise ManifestError(source, exc.problems) from None
    except Unchecked as exc:
        raise CannotCheck(str(exc)) from None
    return submitted.job_id


class ManifestScheduler(beat.Scheduler):
    """A Celery beat scheduler whose entries are the scheduled manifests of one source."""

    reload_every = 30.0  # seconds between rescans of the manifest source
    retry_every = 10.0  # seconds before a slot that met a transient error is tried again

    def __init__(self, *args: Any, source: str | None = None, clock: Any = None, **kwargs: Any):
        self.settings = Settings.from_env()
        where = source or self.settings.schedules
        if not where:
            raise ConfigError("STYLEBATCH_SCHEDULES: not set, so beat has no manifests to fire")
        self.source = ManifestSource(where, self.settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.store = JobStore.from_settings(self.settings)
        self.manifests: dict[str, Scheduled] = {}
        self._scanned_at: datetime | None = None
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self._rescan(self.clock())

    def _rescan(self, now: datetime) -> bool:
        """Reload, surviving any error: False (and a rescan after ``retry_every``) if the
        source could not be read in full; the schedules known so far are kept."""
        try:
            complete = self.reload()
        except Exception as exc:  # S3 or the folder away: beat goes on with what it knows
            log.warning(
                "manifest source %s not readable, keeping %d known schedule(s), retrying in "
                "%.0f s: %s: %s",
                self.source.uri,
                len(self.manifests),
                self.retry_every,
                type(exc).__name__,
                exc,
            )
            complete = False
        if not complete:
            self._scanned_at = now - timedelta(seconds=self.reload_every - self.retry_every)
        return complete

    def reload(self) -> bool:
        """Rescan the source; False if some manifest could not be read for now (a transient
        error), in which case its known version, if any, is kept."""
        versions = self.source.scan()
        complete = True
        for gone in set(self.manifests) - set(versions):
            log.info("schedule removed: %s", gone)
            del self.manifests[gone]
        for source, version in versions.items():
            known = self.manifests.get(source)
            if known and known.version == version:
                continue
            try:
                manifest = parse_manifest(load_manifest(source, self.settings)[0], source)
            except (TransientError, CannotCheck) as exc:  # S3 away: not the manifest's fault
                log.warning("schedule %s not read yet, will retry: %s", source, exc)
                complete = False
                continue
            except Exception as exc:  # a bad manifest must not stop the other schedules
                log.error("schedule ignored, manifest invalid: %s", exc)
                self.manifests.pop(source, None)
                continue
            if manifest.schedule is None:
                self.manifests.pop(source, None)
                continue
            holder = next(
                (
                    m.source
                    for m in self.manifests.values()
                    if m.name == manifest.name and m.source != source
                ),
                None,
            )
            if holder is not None:  # slots and markers go by name: one source per name
                log.error(
                    "schedule ignored: %s is named %r, like %s, which is scheduled already; "
                    "rename one of them",
                    source,
                    manifest.name,
                    holder,
                )
                self.manifests.pop(source, None)
                continue
            self.manifests[source] = Scheduled(
                source, version, manifest.name, manifest.schedule.cron, manifest.schedule.timezone
            )
            log.info(
                "schedule %s: %s %s (%s)",
                "changed" if known else "added",
                manifest.name,
                manifest.schedule.cron,
                manifest.schedule.timezone,
            )
        self._scanned_at = self.clock()
        return complete

    def _marker(self, name: str) -> float | None:
        """The UTC timestamp of the last slot fired for a schedule name, if any."""
        return self.store.beat_marker(name)

    def _set_marker(self, name: str, ts: float, first: bool = False) -> bool:
        """Move the marker of a schedule name to ``ts``; with ``first``, only if it has none.
        True if written."""
        return self.store.set_beat_marker(name, ts, if_absent=first)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Fire every due slot; return the seconds until something may be due again."""
        now = self.clock()
        wait = self.reload_every
        last = self._scanned_at
        due = last is None or (now - last).total_seconds() >= self.reload_every
        if due and not self._rescan(now):
            wait = self.retry_every
        for item in list(self.manifests.values()):
            try:
                slot = latest_slot(item.cron, item.timezone, now)
                if self._set_marker(item.name, slot.timestamp(), first=True):
                    pass  # first sight: this slot has passed already; start with the next
                elif slot.timestamp() > (self._marker(item.name) or 0):
                    if not self.fire(item, slot):
                        wait = min(wait, self.retry_every)
                        continue
                    self._set_marker(item.name, slot.timestamp())
                upcoming = (next_slot(item.cron, item.timezone, now) - now).total_seconds()
            except redis.RedisError as exc:
                log.warning(
                    "schedule %s skipped this tick, Redis error on its marker, retrying in "
                    "%.0f s: %s: %s",
                    item.name,
                    self.retry_every,
                    type(exc).__name__,
                    exc,
                )
                wait = min(wait, self.retry_every)
                continue
            except Exception:  # one schedule's fault must not stop beat or the others
                log.exception("schedule %s skipped this tick", item.name)
                continue
            wait = min(wait, max(1.0, upcoming))
        if self._scanned_at is not None:  # wake for the next rescan (soon after a failed one)
            rescan = self.reload_every - (now - self._scanned_at).total_seconds()
            wait = min(wait, max(1.0, rescan))
        return wait

    def fire(self, item: Scheduled, slot: datetime) -> bool:
        """Claim and submit one slot. True once it is submitted, or can never be (an invalid
        manifest: logged, and the slot passed over); False after a transient error."""
        log.info("firing %s slot %s", item.name, slot_label(slot))
        try:
            job_id = fire_slot(item.source, slot, self.settings, self.app, self.store)
        except (TransientError, CannotCheck, OperationalError, redis.RedisError, NotDurable) as exc:
            log.warning(
                "slot %s of %s not submitted yet, will retry: %s", slot_label(slot), item.name, exc
            )
            return False
        except Exception as exc:
            log.error("slot %s of %s not submitted: %s", slot_label(slot), item.name, exc)
            return True
        log.info("fired %s slot %s: job %s", item.name, slot_label(slot), job_id)
        return True

    @property
    def info(self) -> str:
        return f"    . manifests -> {self.source.uri} ({len(self.manifests)} scheduled)"
