"""Job state in Redis: the job record, each render's spec and state, and counters.

Every render state change is one Lua script, so it is atomic and checked against the allowed
transitions (``RENDER_TRANSITIONS``)::

    pending -> running -> done | skipped | failed | cancelled
    pending -> done | skipped | failed | cancelled      (an output found, a cancel, a give-up)
    running -> pending                                   (released: a transient or device error,
                                                          or its worker reaped after dying)
    failed  -> pending                                   (only through `stylebatch retry`)

A render "running" belongs to one worker process (its *owner*). The owner keeps a heartbeat
in ``sb:heartbeats``; a task that finds the render running under a live owner is a duplicate
delivery and is ignored, not counted as a crash. The first terminal state wins and is counted
once, and exactly one caller learns that the job's last render has ended. Times come from the
Redis server's clock, so workers' clocks may disagree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.expand import JobPlan, Render
from common.sizes import parse_size
from common.summary import RenderRecord, Summary
from common.uris import Location

TERMINAL = ("done", "skipped", "failed", "cancelled")
# upper bounds (seconds) of the render-time histogram: a 0.1 s GPU draft to a 3 h CPU render
RENDER_SECONDS_BUCKETS = (0.1, 0.3, 1, 3, 10, 30, 60, 180, 600, 1800, 3600, 10800)
JOB_TERMINAL = ("done", "cancelled", "failed")
PREFIX = "sb"
RENDER_TRANSITIONS = {
    "pending": ("running", *TERMINAL),
    "running": ("pending", *TERMINAL),
    "failed": ("pending",),  # retry only
}
JOB_TRANSITIONS = {
    "running": ("finalizing",),
    "finalizing": JOB_TERMINAL,
    "done": ("running",),  # retry of failed renders
    "failed": ("running",),
}

# Shared by every script. `ended` counts a render's terminal state once and moves the job to
# finalizing with its last; `crashed` counts a worker death during a render and gives up on it
# at the cap.
_LUA_PRELUDE = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function ended(job, status, t, render)
  redis.call('HINCRBY', job, 'n_' .. status, 1)
  if status == 'failed' then redis.call('SADD', job .. ':failed', render) end
  redis.call('HSET', job, 'activity', t)
  local n = redis.call('HINCRBY', job, 'ended', 1)
  if n == tonumber(redis.call('HGET', job, 'total')) then
    redis.call('HSET', job, 'status', 'finalizing', 'finalizing_since', t)
    return 2
  end
  return 1
end
local function leave_running(job, running, field)
  redis.call('HINCRBY', job, 'n_running', -1)
  redis.call('HDEL', running, field)
end
local function crashed(job, states, crashes, render, cap, t)
  local n = redis.call('HINCRBY', crashes, render, 1)
  if n >= tonumber(cap) then
    local reason = 'the worker died ' .. n .. ' times while rendering this; given up'
    redis.call('HSET', states, render, cjson.encode({status = 'failed', error = reason,
                                                     ended_at = t}))
    return n, ended(job, 'failed', t, render)
  end
  return n, 0
end
"""

# KEYS: job, states, crashes, running, heartbeats
# ARGV: render, owner, liveness, crash cap, owner known dead (or ''), running field
_CLAIM = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {'missing', ''} end
local state = cjson.decode(raw)
local status = state['status']
if status ~= 'pending' and status ~= 'running' then return {'ended', status} end
local t = now()
local crashes = 0
if status == 'running' and state['owner'] ~= ARGV[2] then
  local owner = state['owner']
  local beat = redis.call('ZSCORE', KEYS[5], owner)
  if owner ~= ARGV[5] and beat and t - tonumber(beat) < tonumber(ARGV[3]) then
    return {'busy', owner}
  end
  local gave_up
  crashes, gave_up = crashed(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[4], t)
  if gave_up > 0 then
    leave_running(KEYS[1], KEYS[4], ARGV[6])
    return {'gave_up', tostring(gave_up)}
  end
elseif status == 'pending' then
  redis.call('HINCRBY', KEYS[1], 'n_running', 1)
end
redis.call('HSET', KEYS[2], ARGV[1],
           cjson.encode({status = 'running', owner = ARGV[2], started = t}))
redis.call('HSET', KEYS[4], ARGV[6], ARGV[2])
redis.call('HSET', KEYS[1], 'activity', t)
redis.call('ZADD', KEYS[5], t, ARGV[2])
return {'claimed', tostring(crashes)}
"""

# KEYS: job, states, running, fleet metrics; ARGV: render, status, record, running field
_FINISH = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return -1 end
local status = cjson.decode(raw)['status']
if status ~= 'pending' and status ~= 'running' then return 0 end
local t = now()
if status == 'running' then leave_running(KEYS[1], KEYS[3], ARGV[4]) end
local record = cjson.decode(ARGV[3])
record['ended_at'] = t
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(record))
if type(record['device']) == 'string' and tonumber(record['seconds']) then
  local seconds = tonumber(record['seconds'])
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost:seconds:' .. record['device'], seconds)
  redis.call('HINCRBYFLOAT', KEYS[1], 'cost:pixel_iterations', record['pixel_iterations'] or 0)
  -- the fleet's counters, what the metrics endpoint reads (scheduler/metrics.py)
  redis.call('HINCRBYFLOAT', KEYS[4], 'device_seconds:' .. record['device'], seconds)
  local bucket = '+Inf'
  for _, le in ipairs({__BUCKETS__}) do
    if seconds <= le then bucket = tostring(le); break end
  end
  redis.call('HINCRBY', KEYS[4], 'render_seconds_bucket:' .. bucket, 1)
  redis.call('HINCRBYFLOAT', KEYS[4], 'render_seconds_sum', seconds)
end
if ARGV[2] == 'done' then redis.call('HINCRBY', KEYS[1], 'cost:outputs', 1) end
redis.call('HINCRBY', KEYS[4], 'renders_ended:' .. ARGV[2], 1)
return ended(KEYS[1], ARGV[2], t, ARGV[1])
""".replace("__BUCKETS__", ", ".join(map(str, RENDER_SECONDS_BUCKETS)))

# KEYS: job, states, running; ARGV: render, owner, running field
_RELEASE = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local state = cjson.decode(raw)
if state['status'] ~= 'running' or state['owner'] ~= ARGV[2] then return 0 end
leave_running(KEYS[1], KEYS[3], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], '{"status":"pending"}')
redis.call('HSET', KEYS[1], 'activity', now())
return 1
"""

# KEYS: job, states, crashes, running; ARGV: render, dead owner, crash cap, running field
_REAP = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
local state = raw and cjson.decode(raw)
if not state or state['status'] ~= 'running' or state['owner'] ~= ARGV[2] then
  if redis.call('HGET', KEYS[4], ARGV[4]) == ARGV[2] then redis.call('HDEL', KEYS[4], ARGV[4]) end
  return {'gone', '0'}
end
local t = now()
leave_running(KEYS[1], KEYS[4], ARGV[4])
local crashes, gave_up = crashed(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], t)
if gave_up > 0 then return {'gave_up', tostring(gave_up)} end
redis.call('HSET', KEYS[2], ARGV[1], '{"status":"pending"}')
redis.call('HSET', KEYS[1], 'activity', t)
return {'requeued', tostring(crashes)}
"""

# KEYS: job, states, crashes, active, specs, device errors, failed; ARGV: job id. Reads only
# the job's failed set, never the whole job. A job that ended and is retried lasts again.
_RESET_FAILED = """
local reset = redis.call('SMEMBERS', KEYS[7])
for _, render in ipairs(reset) do
  redis.call('HSET', KEYS[2], render, '{"status":"pending"}')
  redis.call('HDEL', KEYS[3], render)
end
if #reset > 0 then
  redis.call('DEL', KEYS[7])
  redis.call('HINCRBY', KEYS[1], 'n_failed', -#reset)
  redis.call('HINCRBY', KEYS[1], 'ended', -#reset)
  redis.call('HSET', KEYS[1], 'status', 'running', 'activity', now())
  redis.call('HDEL', KEYS[1], 'finished', 'reason', 'finalizing_since')
  redis.call('SADD', KEYS[4], ARGV[1])
  for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6]}) do
    redis.call('PERSIST', key)
  end
end
return reset
"""

# KEYS: job, active, then the job's other keys; ARGV: job id, terminal status, reason, seconds
# its state is kept. Only a finalizing job ends.
_END_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'finalizing' then return status or '' end
local final = ARGV[2]
if final == 'done' and redis.call('HGET', KEYS[1], 'cancelled') == '1' then final = 'cancelled' end
redis.call('HSET', KEYS[1], 'status', final, 'finished', now())
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
redis.call('SREM', KEYS[2], ARGV[1])
for i = 1, #KEYS do
  if i ~= 2 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
end
return 'ok'
"""

# KEYS: heartbeats, workers; ARGV: owner, description (JSON)
_BEAT = """
local t = now()
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return tostring(t)
"""


@dataclass
class JobInfo:
    job_id: str
    meta: dict[str, str]

    @property
    def total(self) -> int:
        return int(self.meta.get("total", 0))

    @property
    def status(self) -> str:
        return self.meta.get("status", "unknown")

    @property
    def cancelled(self) -> bool:
        return self.meta.get("cancelled") == "1"

    @property
    def terminal(self) -> bool:
        return self.status in JOB_TERMINAL

    def count(self, status: str) -> int:
        return int(self.meta.get(f"n_{status}", 0))

    def cost(self) -> dict[str, Any]:
        """What the job has spent, counted once per render by its transition to an end (a
        render that ran: done, or failed after rendering): device-seconds by device type,
        pixel-iterations, and outputs written. Same shape as ``Summary.cost``."""
        prefix = "cost:seconds:"
        return {
            "device_seconds": {
                k.removeprefix(prefix): round(float(v), 3)
                for k, v in self.meta.items()
                if k.startswith(prefix)
            },
            "pixel_iterations": float(self.meta.get("cost:pixel_iterations", 0)),
            "outputs": int(self.meta.get("cost:outputs", 0)),
        }

    @property
    def running(self) -> int:
        return max(0, self.count("running"))

    @property
    def pending(self) -> int:
        return max(0, self.total - int(self.meta.get("ended", 0)) - self.running)

    def seconds_since(self, field: str, now: float) -> float:
        return now - float(self.meta.get(field) or self.meta.get("created") or now)

    @property
    def location(self) -> Location:
        scheme, root, prefix = json.loads(self.meta["location"])
        return Location(scheme, root, prefix)


@dataclass(frozen=True)
class Claim:
    """What a task may do with a render: ``claimed`` (render it), ``busy`` (a live worker
    has it: a duplicate delivery, ignore), ``ended`` (already terminal: ignore), ``gave_up``
    (its worker died too often: recorded failed; ``complete`` if that ended the job)."""

    outcome: str
    crashes: int = 0
    detail: str = ""
    complete: bool = False


def running_field(job_id: str, render_id: str) -> str:
    return f"{job_id} {render_id}"


class JobStore:
    def __init__(self, client: redis.Redis, job_ttl: int = 30 * 24 * 3600):
        self.r = client
        self.job_ttl = job_ttl  # seconds an ended job's state is kept (STYLEBATCH_JOB_TTL)
        self._claim = client.register_script(_LUA_PRELUDE + _CLAIM)
        self._finish = client.register_script(_LUA_PRELUDE + _FINISH)
        self._release = client.register_script(_LUA_PRELUDE + _RELEASE)
        self._reap = client.register_script(_LUA_PRELUDE + _REAP)
        self._reset = client.register_script(_LUA_PRELUDE + _RESET_FAILED)
        self._end_job = client.register_script(_LUA_PRELUDE + _END_JOB)
        self._beat = client.register_script(_LUA_PRELUDE + _BEAT)

    @classmethod
    def from_url(
        cls, url: str, tls_ca: str = "", retries: int = 20, job_ttl: int = 30 * 24 * 3600
    ) -> JobStore:
        """A client that rides out a Redis restart: commands retry with backoff (20 retries:
        about a minute; the command line asks for fewer, to report a bad setting quickly).
        ``rediss://`` URLs verify the server's certificate (against ``tls_ca`` if given)."""
        retry = Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=retries)
        tls = {"ssl_cert_reqs": "required", "ssl_ca_certs": tls_ca or None}
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
            **(tls if url.startswith("rediss://") else {}),
        )
        return cls(client, job_ttl)

    # keys
    def _job(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _specs(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:specs"

    def _states(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:states"

    def _crashes(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:crashes"

    def _devices(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:device_errors"

    def _failed(self, job_id: str) -> str:
        """The ids of its failed renders (the Lua prelude derives the same name)."""
        return f"{PREFIX}:job:{job_id}:failed"

    ACTIVE = f"{PREFIX}:active"  # jobs not yet ended: what the reconciler looks at
    RUNNING = f"{PREFIX}:running"  # "job render" -> owner, for every running render
    HEARTBEATS = f"{PREFIX}:heartbeats"  # owner -> last beat (Redis time)
    WORKERS = f"{PREFIX}:workers"  # owner -> its description and health (JSON)
    METRICS = f"{PREFIX}:metrics"  # fleet-wide counters (scheduler/metrics.py)

    def count_failure(self, what: str) -> None:
        """A fleet-wide failure counter: ``finalize`` or ``webhook``."""
        self.r.hincrby(self.METRICS, f"failures:{what}", 1)

    def now(self) -> float:
        """The Redis server's clock, which every transition and heartbeat uses."""
        seconds, micros = self.r.time()
        return seconds + micros / 1e6

    # creation
    def create(self, plan: JobPlan, force: bool = False) -> bool:
        """Record a new job; False if it already exists (and ``force`` is not set). The job is
        marked ``sent`` only once all its tasks are published (``mark_sent``)."""
        key = self._job(plan.job_id)
        if force:
            self.delete(plan.job_id)
        if not self.r.hsetnx(key, "created", repr(time.time())):
            return False
        loc = plan.location
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                "name": plan.name,
                "source": plan.source,
                "total": len(plan.renders),
                "status": "running" if plan.renders else "finalizing",
                "location": json.dumps([loc.scheme, loc.root, loc.prefix]),
                "format": plan.format,
                "quality": plan.manifest.output.quality,
                "weights": plan.weights,
                "priority": plan.manifest.priority,
                "ended": 0,
                "n_running": 0,
                "sent": 0,
                "activity": repr(time.time()),
                "webhook": plan.manifest.notify.webhook if plan.manifest.notify else "",
                "credentials": {True: "1", False: "0", None: ""}[plan.manifest.output.credentials],
            },
        )
        for i in range(0, len(plan.renders), 1000):
            chunk = plan.renders[i : i + 1000]
            pipe.hset(
                self._specs(plan.job_id),
                mapping={r.id: json.dumps(r.to_dict(), separators=(",", ":")) for r in chunk},
            )
            pipe.hset(
                self._states(plan.job_id), mapping={r.id: '{"status":"pending"}' for r in chunk}
            )
        pipe.zadd(f"{PREFIX}:jobs", {plan.job_id: time.time()})
        pipe.sadd(self.ACTIVE, plan.job_id)
        pipe.execute()
        return True

    def mark_sent(self, job_id: str) -> None:
        self.r.hset(self._job(job_id), mapping={"sent": 1, "activity": self.now()})

    def delete(self, job_id: str) -> None:
        self.r.delete(*self._job_keys(job_id))
        self.r.zrem(f"{PREFIX}:jobs", job_id)
        self.r.srem(self.ACTIVE, job_id)

    # reading
    def get(self, job_id: str) -> JobInfo | None:
        meta = self.r.hgetall(self._job(job_id))
        return JobInfo(job_id, meta) if meta else None

    def jobs(self, limit: int = 50, offset: int = 0) -> list[JobInfo]:
        """Newest first, one page."""
        ids = self.r.zrevrange(f"{PREFIX}:jobs", offset, offset + limit - 1)
        return [info for job_id in ids if (info := self.get(job_id))]

    def active(self) -> list[str]:
        return sorted(self.r.smembers(self.ACTIVE))

    def specs(self, job_id: str, render_ids: list[str] | None = None) -> list[Render]:
        """Of ``render_ids`` (HMGET, a thousand at a time), or all (HSCAN, in pages): no single
        command grows with the job, so a 100,000-render job never blocks Redis."""
        if render_ids is None:
            raw = [v for _, v in self.r.hscan_iter(self._specs(job_id), count=500)]
        else:
            raw = [
                x
                for i in range(0, len(render_ids), 1000)
                for x in self.r.hmget(self._specs(job_id), render_ids[i : i + 1000])
                if x
            ]
        return [Render.from_dict(json.loads(x)) for x in raw]

    def states(self, job_id: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.r.hscan_iter(self._states(job_id), count=1000)}

    def failed(self, job_id: str, limit: int = 50) -> list[str]:
        """Up to ``limit`` failed render ids, sorted, read from the job's failed set in small
        pages: what ``status`` shows costs the same for any size of job."""
        found: list[str] = []
        for render_id in self.r.sscan_iter(self._failed(job_id), count=100):
            found.append(render_id)
            if len(found) >= limit:
                break
        return sorted(found)

    def state(self, job_id: str, render_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self._states(job_id), render_id)
        return json.loads(raw) if raw else None

    def with_status(self, job_id: str, status: str, among: list[str] | None = None) -> list[str]:
        """Render ids in one state: of ``among`` (HMGET, a thousand at a time), or of the whole
        job (HSCAN, in pages), so a big job never blocks Redis."""
        if among is None:
            pairs = self.r.hscan_iter(self._states(job_id), count=1000)
        else:
            pairs = (
                pair
                for i in range(0, len(among), 1000)
                for pair in zip(
                    among[i : i + 1000],
                    self.r.hmget(self._states(job_id), among[i : i + 1000]),
                    strict=True,
                )
            )
        return [rid for rid, raw in pairs if raw and json.loads(raw)["status"] == status]

    # render transitions
    def claim(
        self,
        job_id: str,
        render_id: str,
        owner: str,
        liveness: float,
        max_crashes: int,
        dead_owner: str = "",
    ) -> Claim:
        """Take a render for ``owner``. A render running under another owner whose heartbeat
        is older than ``liveness`` seconds (or ``dead_owner``, known dead) counts a crash."""
        keys = [
            self._job(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self.RUNNING,
            self.HEARTBEATS,
        ]
        field = running_field(job_id, render_id)
        args = [render_id, owner, liveness, max_crashes, dead_owner, field]
        outcome, detail = self._claim(keys=keys, args=args)
        if outcome == "claimed":
            return Claim("claimed", crashes=int(detail))
        if outcome == "gave_up":
            return Claim("gave_up", crashes=max_crashes, complete=detail == "2")
        return Claim(outcome, detail=detail)

    def finish(self, job_id: str, render_id: str, status: str, **fields: Any) -> int:
        """Record a terminal state: 0 already ended, 1 recorded, 2 recorded and job complete
        (-1: no such render)."""
        assert status in TERMINAL, status
        record = json.dumps({"status": status, **fields})
        keys = [self._job(job_id), self._states(job_id), self.RUNNING, self.METRICS]
        field = running_field(job_id, render_id)
        return int(self._finish(keys=keys, args=[render_id, status, record, field]))

    def release(self, job_id: str, render_id: str, owner: str) -> bool:
        """Back to pending, if ``owner`` holds it (a transient or device error is no crash)."""
        keys = [self._job(job_id), self._states(job_id), self.RUNNING]
        return bool(
            self._release(keys=keys, args=[render_id, owner, running_field(job_id, render_id)])
        )

    def reap(self, job_id: str, render_id: str, dead_owner: str, max_crashes: int) -> Claim:
        """A render whose owner died: one crash, then pending again (or failed at the cap)."""
        keys = [self._job(job_id), self._states(job_id), self._crashes(job_id), self.RUNNING]
        field = running_field(job_id, render_id)
        outcome, detail = self._reap(keys=keys, args=[render_id, dead_owner, max_crashes, field])
        if outcome == "gave_up":
            return Claim("gave_up", crashes=max_crashes, complete=detail == "2")
        return Claim(outcome, crashes=int(detail))

    def crashes(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._crashes(job_id)).items()}

    def device_error(self, job_id: str, render_id: str) -> int:
        """Count a device failure during a render (not a crash: the device was at fault)."""
        return int(self.r.hincrby(self._devices(job_id), render_id, 1))

    def device_errors(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._devices(job_id)).items()}

    def reset_failed(self, job_id: str) -> list[str]:
        keys = [
            self._job(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self.ACTIVE,
            self._specs(job_id),
            self._devices(job_id),
            self._failed(job_id),
        ]
        return list(self._reset(keys=keys, args=[job_id]))

    # job transitions
    def end_job(self, job_id: str, status: str = "done", reason: str = "") -> bool:
        """finalizing -> done (cancelled if a cancel was asked for) or failed with a reason;
        False if the job was not finalizing."""
        assert status in ("done", "failed"), status
        keys = [self._job(job_id), self.ACTIVE, *self._job_keys(job_id)[1:]]
        args = [job_id, status, reason, self.job_ttl]
        return self._end_job(keys=keys, args=args) == "ok"

    def _job_keys(self, job_id: str) -> list[str]:
        return [
            self._job(job_id),
            self._specs(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self._devices(job_id),
            self._failed(job_id),
        ]

    def memory(self, job_id: str) -> int:
        """Bytes the job's state takes in Redis."""
        return sum(self.r.memory_usage(key) or 0 for key in self._job_keys(job_id))

    def gc(self, older_than: float | None = None) -> dict[str, int]:
        """Delete now every ended job that finished more than ``older_than`` seconds ago
        (default: the retention, ``job_ttl``), and drop ids of jobs already expired from the
        index. Running jobs are never touched. Returns what was freed."""
        older_than = self.job_ttl if older_than is None else older_than
        cutoff = self.now() - older_than
        freed = {"jobs": 0, "bytes": 0, "expired_ids": 0}
        for job_id in self.r.zrange(f"{PREFIX}:jobs", 0, -1):
            info = self.get(job_id)
            if info is None:
                self.r.zrem(f"{PREFIX}:jobs", job_id)
                freed["expired_ids"] += 1
            elif info.terminal and float(info.meta.get("finished") or 0) <= cutoff:
                freed["bytes"] += self.memory(job_id)
                self.delete(job_id)
                freed["jobs"] += 1
        return freed

    def mark_finished(self, job_id: str) -> None:
        self.end_job(job_id, "done")

    def touch_finalizing(self, job_id: str) -> None:
        self.r.hset(self._job(job_id), "finalizing_since", self.now())

    def note(self, job_id: str, **fields: str) -> None:
        """Record facts about a job that are no transition (a webhook's outcome, say)."""
        self.r.hset(self._job(job_id), mapping=fields)

    def tally(self, job_id: str, field: str) -> int:
        """Count something in a job's record; returns the new count."""
        return int(self.r.hincrby(self._job(job_id), field, 1))

    def touch(self, job_id: str) -> None:
        self.r.hset(self._job(job_id), "activity", self.now())

    def claim_slot(self, name: str, label: str, job_id: str) -> str | None:
        """Claim a schedule slot for a job: None if claimed now, else the job that holds it."""
        key = f"{PREFIX}:slot:{name}:{label}"
        if self.r.set(key, job_id, nx=True, ex=400 * 24 * 3600):
            return None
        return self.r.get(key)

    def cancel(self, job_id: str) -> bool:
        if not self.r.exists(self._job(job_id)):
            return False
        self.r.hset(self._job(job_id), "cancelled", "1")
        return True

    # worker liveness
    def beat(self, owner: str, description: dict[str, Any]) -> float:
        """Record that ``owner`` (a worker process) is alive; returns the Redis time."""
        keys = [self.HEARTBEATS, self.WORKERS]
        return float(self._beat(keys=keys, args=[owner, json.dumps(description)]))

    def forget(self, owner: str) -> None:
        self.r.zrem(self.HEARTBEATS, owner)
        self.r.hdel(self.WORKERS, owner)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every known worker process: its description, health and seconds since its beat."""
        now = self.now()
        beats = dict(self.r.zrange(self.HEARTBEATS, 0, -1, withscores=True))
        out = {}
        for owner, raw in self.r.hgetall(self.WORKERS).items():
            out[owner] = {**json.loads(raw), "age": now - beats.get(owner, 0.0)}
        return out

    def silent_owners(self, liveness: float) -> list[str]:
        """Owners whose last heartbeat is older than ``liveness`` seconds."""
        return list(self.r.zrangebyscore(self.HEARTBEATS, "-inf", self.now() - liveness))

    def running_renders(self) -> list[tuple[str, str, str]]:
        """(job, render, owner) for every running render, fleet-wide."""
        out = []
        for field, owner in self.r.hscan_iter(self.RUNNING, count=1000):
            job_id, render_id = field.split(" ", 1)
            out.append((job_id, render_id, owner))
        return out

    # reports
    def summary(self, job_id: str) -> Summary:
        info = self.get(job_id)
        if info is None:
            raise KeyError(job_id)
        states = self.states(job_id)
        records = []
        order = lambda r: (r.content, r.style, parse_size(r.size).pixels, str(r.size))  # noqa: E731
        for render in sorted(self.specs(job_id), key=order):
            record = RenderRecord.of(render, info.location.uri_of(render.key))
            state = states.get(render.id, {})
            record.status = state.get("status", "pending")
            if record.status == "running":
                record.status = "pending"
            record.seconds = state.get("seconds")
            record.error = state.get("error")
            record.weights_id = state.get("weights_id")
            record.losses = state.get("losses")
            record.rendered_by = state.get("rendered_by")
            record.device = state.get("device")
            record.pixel_iterations = state.get("pixel_iterations")
            records.append(record)
        return Summary(
            job_id=job_id,
            name=info.meta["name"],
            source=info.meta["source"],
            output=str(info.location),
            weights=info.meta["weights"],
            renders=records,
            started=float(info.meta["created"]),
            finished=float(info.meta["finished"]) if "finished" in info.meta else None,
        )
