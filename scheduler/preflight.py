"""Checks before any GPU time is spent: the output location exists and takes writes, and the
weights may be read. Every input was checked (allowed, present, small enough) and identified
when the job was planned (common/inputs.py); those problems are reported here with the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.access import OutputRefused, check_output
from common.errors import Problem, TransientError
from common.expand import JobPlan
from common.settings import Settings
from common.storage import s3_client, storage_error
from common.uris import Location, join_key

PROBE_KEY = ".stylebatch-write-check"


def preflight(
    plan: JobPlan, settings: Settings, team: str = "", secrets: tuple[str, ...] | None = None
) -> list[Problem]:
    """Every problem that would fail renders of this job, found without rendering. Raises
    TransientError when the output location cannot be checked now (S3 away). ``team``: the
    web team submitting it, whose own ``secrets`` sign its webhooks (common/notify.py)."""
    from common.notify import check_webhook

    notify = plan.manifest.notify
    hook = check_webhook(notify.webhook if notify else None, settings, team, secrets)
    return (
        check_location(plan.location, settings)
        + plan.problems
        + hook
        + check_credentials(plan.manifest.output.credentials, settings)
    )


def check_credentials(requested: bool | None, settings: Settings) -> list[Problem]:
    """Credentials asked for (by the manifest or the deployment) need a certificate and a key
    named in the settings; the workers read the files and check again."""
    if settings.signs(requested) and not (settings.c2pa_cert and settings.c2pa_key):
        message = (
            "content credentials are on but STYLEBATCH_C2PA_CERT and STYLEBATCH_C2PA_KEY are "
            "not both set"
        )
        return [Problem("output.credentials", message)]
    return []


def check_location(location: Location, settings: Settings) -> list[Problem]:
    """Problems with the output location. S3 unreachable, timing out or answering 5xx to the
    probe is no problem of the manifest: TransientStorageError is raised, so beat tries the
    slot again later and `submit`/`validate` say the check could not be made."""
    where = "output.location"
    try:
        check_output(str(location), settings)
    except OutputRefused as exc:
        return [Problem(where, str(exc))]
    if location.scheme != "s3":
        folder = Path(location.root)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            return [Problem(where, f"{location}: folder cannot be written ({existing})")]
        return []
    client = s3_client(settings)
    key = join_key(location.prefix, PROBE_KEY)
    try:
        client.head_bucket(Bucket=location.root)
        client.put_object(Bucket=location.root, Key=key, Body=b"")
        client.delete_object(Bucket=location.root, Key=key)
    except Exception as exc:
        error = storage_error(exc, location.root, key)
        if isinstance(error, TransientError):  # S3 away or failing: ask again later
            raise error from exc
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return [Problem(where, f"{location}: bucket {location.root!r} does not exist")]
        return [Problem(where, f"{location}: cannot write: {error}")]
    return []
