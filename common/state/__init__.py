"""The fleet's state in Redis, and the only package that writes it: jobs, renders, workers'
heartbeats, leases, schedule slots and beat markers, webhook deliveries, counters, and the
web front's sessions, rates and idempotency keys. Other modules read through
``JobStore.read``, which has no write commands. The state machine is described here, once.

**Renders** (``RENDER_TRANSITIONS``)::

    pending -> running                 claim: a new attempt, whose number is the fencing token
    running -> done | skipped | failed | cancelled     finish, by the attempt that holds it
    running -> pending                 release (transient, configuration or device error) by
                                       its attempt; reap (its owner went silent): one crash
    running -> failed                  crash cap, device-error cap, or its task's errback
    failed  -> pending                 only through `stylebatch retry`

``done`` and ``skipped`` are decided from facts: an output that already carries the render's
id was written by the job it names (done if that is this job, skipped if another). A
transition that carries an attempt other than the render's current one is *superseded*:
refused and counted (``superseded`` in the fleet counters), never recorded as an outcome. The
first terminal state wins and is counted once, and exactly one caller learns that the job's
last render ended.

**Jobs**::

    (none) -> running                  create (whole, from staging), or -> finalizing with none
    running -> running                 cancel asked: renders not yet started end cancelled
    running -> finalizing              its last render ended (the Lua prelude's ``ended``)
    finalizing -> done | cancelled | failed     end_job, by the finalize holding the lease
    done | failed | cancelled -> running        retry (failed renders pending again)

A cancel of a finalizing or ended job changes nothing; ``--force`` of a running job is
refused. One finalize holds a job's end at a time, and one caller ends it; its webhook
delivery is claimed by one notify task. What leaves the system waits for a replica (Redis
``WAIT``, ``STYLEBATCH_REDIS_WAIT_REPLICAS``): the finalize lease before the summary is
written (and with it every render's end), a delivery's claim before the POST, and a job's
creation before submit reports it. Times come from the Redis server's clock.

**Every change with a rule is one Lua script** in ``common/lua/`` (one file per operation,
each opening with the transitions it allows and the KEYS it takes; every key name is made in
``keys.py`` and comes in KEYS). The plain writes, each with why it needs no script, are
``PLAIN_WRITES``; tests/unit/test_state_shape.py holds the code to that list.
"""

from common.state.jobs import Running
from common.state.keys import SCHEMA, JobKeys
from common.state.model import (
    FACETS_LISTED,
    FINISH,
    INDEX_FACETS,
    JOB_TERMINAL,
    RENDER_SECONDS_BUCKETS,
    RENDER_TRANSITIONS,
    STAGING_TTL,
    SUBMIT_LEASE,
    TERMINAL,
    Beat,
    Claim,
    Facets,
    Held,
    Incomplete,
    JobInfo,
    Rate,
    RenderPage,
    index_entries,
    running_field,
)
from common.state.reads import READ_COMMANDS, ReadOnly
from common.state.scripts import SCRIPTS, NotDurable, script_source
from common.state.store import JobStore

# Writes made without a script, and why none is needed: each touches keys that nothing else
# changes at the same time, or is one command (atomic by itself), or is a lookup's cleanup.
PLAIN_WRITES = {
    "create": "staging in chunks (HSET, ZADD, EXPIRE under an attempt's own keys, invisible "
    "until create.lua renames them) and deleting a create's own staging",
    "delete": "deleting a job whole (`--force` of an ended job, gc): off the indexes, then "
    "UNLINK of its keys; no MULTI, which Redis out of memory refuses (gc is the way out)",
    "gc": "deleting ended jobs and expired ids from the jobs indexes",
    "owed_webhooks": "dropping from the owed set a job that is gone",
    "index_recorded": "building an old job's index under keys of its own, then one script",
    "count_failure": "one HINCRBY of a fleet counter",
    "claim_slot": "one SET NX: the first claim of a schedule slot wins",
    "set_beat_marker": "one SET (NX where asked) of beat's marker",
    "open_session": "one SET NX EX of a new random session",
    "end_session": "one DEL of a session",
}

__all__ = [
    "FACETS_LISTED",
    "FINISH",
    "INDEX_FACETS",
    "JOB_TERMINAL",
    "PLAIN_WRITES",
    "READ_COMMANDS",
    "RENDER_SECONDS_BUCKETS",
    "RENDER_TRANSITIONS",
    "SCHEMA",
    "SCRIPTS",
    "STAGING_TTL",
    "SUBMIT_LEASE",
    "TERMINAL",
    "Beat",
    "Claim",
    "Facets",
    "Held",
    "Incomplete",
    "JobInfo",
    "JobKeys",
    "JobStore",
    "NotDurable",
    "Rate",
    "ReadOnly",
    "RenderPage",
    "Running",
    "index_entries",
    "running_field",
    "script_source",
]
