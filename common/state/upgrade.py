"""The key schema's upgrade, once, at a service's start (common/startup.py): schema 1 named a
job's keys ``sb:job:<id>[:what]``; schema 2 puts them under the job's hash tag,
``sb:job:{<id>}[:what]`` (common/state/keys.py), and keeps reap markers in one hash per job.
Every old key is renamed (never overwriting a new one), old reap markers are dropped (they
only let a paused worker's crash be taken back), and the schema is recorded. One service does
it, under a lease; the others find it done. Idempotent: a service killed part way leaves the
rest to the next."""

from __future__ import annotations

from typing import Any

from common.state import keys
from common.state.keys import JobKeys

LEASE = "schema-upgrade"


def upgrade(store: Any) -> int:
    """Bring the state to the current schema; the keys renamed (0 when it already was)."""
    if store.r.get(keys.SCHEMA_KEY) == str(keys.SCHEMA):
        return 0
    token = store.token()
    if not store.lease(LEASE, token, 300):
        return 0  # another service is upgrading now
    renamed = 0
    try:
        for key in store.r.scan_iter(match=f"{keys.PREFIX}:job:*", count=1000):
            job_id, _, what = key[len(f"{keys.PREFIX}:job:") :].partition(":")
            if not job_id or "{" in job_id:
                continue  # schema 2 already
            new = JobKeys(job_id).record + (f":{what}" if what else "")
            renamed += int(store.r.renamenx(key, new))
        for key in store.r.scan_iter(match=f"{keys.PREFIX}:reaped:*", count=1000):
            store.r.delete(key)
        store.r.set(keys.SCHEMA_KEY, keys.SCHEMA)
    finally:
        store.let_go(LEASE, token)
    return renamed
