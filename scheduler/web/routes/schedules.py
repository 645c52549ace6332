"""Schedules: the scheduled manifests that write under the team's outputs, with their next
slots and the jobs of their past ones. Where a manifest lives on the server is not shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from fastapi import APIRouter, Request

from common.teams import Team
from scheduler.web import models
from scheduler.web.context import Web
from scheduler.web.deps import TeamDep, web
from scheduler.web.problems import READ, Unavailable, declare

router = APIRouter(tags=["schedules"])


def schedules_of(ctx: Web, who: Team, slots: int = 5) -> list[dict[str, Any]]:
    """The scheduled manifests (STYLEBATCH_SCHEDULES) that write under the team's outputs."""
    from common.access import under
    from common.manifest import parse_manifest
    from common.schedule import latest_slot, next_slot, slot_label
    from common.uris import parse_location
    from scheduler.beat import ManifestSource, load_manifest

    if not ctx.settings.schedules:
        return []
    where = ctx.settings.schedules
    try:
        sources = ManifestSource(where, ctx.settings).scan()
    except redis.RedisError:
        raise  # answered 503 naming Redis (app.py)
    except Exception as exc:  # S3 away, or the folder unreadable: said, without the place
        service = "S3" if where.startswith("s3://") else "the schedules folder"
        raise Unavailable(
            service, f"cannot list the scheduled manifests ({type(exc).__name__})"
        ) from None
    now = datetime.now(UTC)
    out = []
    for source in sorted(sources):
        try:
            data, base = load_manifest(source, ctx.settings)
            manifest = parse_manifest(data, source)
            where = str(parse_location(manifest.output.location, base))
        except Exception:
            continue  # beat reports broken manifests; the team sees only its own working ones
        if manifest.schedule is None or not any(under(where, p) for p in who.allowed_outputs):
            continue
        cron, zone = manifest.schedule.cron, manifest.schedule.timezone
        upcoming, at = [], now
        for _ in range(slots):
            at = next_slot(cron, zone, at)
            upcoming.append(at.isoformat())
        past, at = [], now
        for _ in range(slots):
            at = latest_slot(cron, zone, at)
            past.append(at)
            at = datetime.fromtimestamp(at.timestamp() - 1, UTC)
        held = ctx.store.slot_jobs(manifest.name, [slot_label(s) for s in past])
        past_jobs = []
        for slot in past:
            job = held.get(slot_label(slot))
            info = ctx.store.get(job) if job else None
            past_jobs.append(
                {"slot": slot.isoformat(), "job": job, "status": info.status if info else None}
            )
        out.append(
            {
                "name": manifest.name,
                "cron": cron,
                "timezone": zone,
                "output": where,
                "next": upcoming,
                "past": past_jobs,
            }
        )
    return out


@router.get(
    "/schedules",
    summary="Scheduled manifests: slots and jobs",
    response_model=models.Schedules,
    responses=declare(*READ),
)
def schedules(request: Request, who: TeamDep) -> dict[str, Any]:
    return {"schedules": schedules_of(web(request), who)}
