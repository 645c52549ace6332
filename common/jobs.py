"""Job state in Redis: the job record, each render's spec and state, and counters.

A render's first terminal state (done, skipped, failed, cancelled) is recorded by one Lua
script that also counts it, so a re-delivered render is never counted twice and exactly one
caller learns that the job's last render has ended. No chords: counters only.
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
from common.summary import RenderRecord, Summary
from common.uris import Location

TERMINAL = ("done", "skipped", "failed", "cancelled")
PREFIX = "sb"

_RECORD = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current then
  local status = cjson.decode(current)['status']
  if status == 'done' or status == 'skipped' or status == 'failed' or status == 'cancelled' then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'n_' .. ARGV[2], 1)
local ended = redis.call('HINCRBY', KEYS[1], 'ended', 1)
if ended == tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSET', KEYS[1], 'status', 'finalizing')
  return 2
end
return 1
"""

_RESET_FAILED = """
local reset = {}
local states = redis.call('HGETALL', KEYS[2])
for i = 1, #states, 2 do
  if cjson.decode(states[i + 1])['status'] == 'failed' then
    redis.call('HSET', KEYS[2], states[i], cjson.encode({status = 'pending'}))
    redis.call('HDEL', KEYS[3], states[i])
    table.insert(reset, states[i])
  end
end
if #reset > 0 then
  redis.call('HINCRBY', KEYS[1], 'n_failed', -#reset)
  redis.call('HINCRBY', KEYS[1], 'ended', -#reset)
  redis.call('HSET', KEYS[1], 'status', 'running')
  redis.call('HDEL', KEYS[1], 'finished')
end
return reset
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

    def count(self, status: str) -> int:
        return int(self.meta.get(f"n_{status}", 0))

    @property
    def location(self) -> Location:
        scheme, root, prefix = json.loads(self.meta["location"])
        return Location(scheme, root, prefix)


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._record = client.register_script(_RECORD)
        self._reset = client.register_script(_RESET_FAILED)

    @classmethod
    def from_url(cls, url: str, tls_ca: str = "", retries: int = 20) -> JobStore:
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
        return cls(client)

    # keys
    def _job(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _specs(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:specs"

    def _states(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:states"

    def _crashes(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:crashes"

    # creation
    def create(self, plan: JobPlan, force: bool = False) -> bool:
        """Record a new job; False if it already exists (and ``force`` is not set)."""
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
        pipe.execute()
        return True

    def delete(self, job_id: str) -> None:
        self.r.delete(
            self._job(job_id), self._specs(job_id), self._states(job_id), self._crashes(job_id)
        )
        self.r.zrem(f"{PREFIX}:jobs", job_id)

    # reading
    def get(self, job_id: str) -> JobInfo | None:
        meta = self.r.hgetall(self._job(job_id))
        return JobInfo(job_id, meta) if meta else None

    def jobs(self, limit: int = 50) -> list[JobInfo]:
        ids = self.r.zrevrange(f"{PREFIX}:jobs", 0, limit - 1)
        return [info for job_id in ids if (info := self.get(job_id))]

    def specs(self, job_id: str, render_ids: list[str] | None = None) -> list[Render]:
        if render_ids is None:
            raw = list(self.r.hgetall(self._specs(job_id)).values())
        else:
            raw = [x for x in self.r.hmget(self._specs(job_id), render_ids) if x]
        return [Render.from_dict(json.loads(x)) for x in raw]

    def states(self, job_id: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self._states(job_id)).items()}

    def state(self, job_id: str, render_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self._states(job_id), render_id)
        return json.loads(raw) if raw else None

    def running(self, job_id: str) -> int:
        return sum(1 for s in self.states(job_id).values() if s["status"] == "running")

    # transitions
    def crashed(self, job_id: str, render_id: str) -> int:
        """Count one worker death during this render; returns how many there have been."""
        return int(self.r.hincrby(self._crashes(job_id), render_id, 1))

    def crashes(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._crashes(job_id)).items()}

    def requeue(self, job_id: str, render_id: str) -> None:
        """Back to pending (a retry after a transient failure is not a crash)."""
        state = self.state(job_id, render_id)
        if state is not None and state["status"] == "running":
            self.r.hset(self._states(job_id), render_id, '{"status":"pending"}')

    def start(self, job_id: str, render_id: str, worker: str) -> None:
        state = self.state(job_id, render_id)
        if state is None or state["status"] not in TERMINAL:
            record = {"status": "running", "worker": worker, "started": time.time()}
            self.r.hset(self._states(job_id), render_id, json.dumps(record))

    def finish(self, job_id: str, render_id: str, status: str, **fields: Any) -> int:
        """Record a terminal state: 0 already ended, 1 recorded, 2 recorded and job complete."""
        assert status in TERMINAL, status
        record = json.dumps({"status": status, "ended_at": time.time(), **fields})
        keys = [self._job(job_id), self._states(job_id)]
        return int(self._record(keys=keys, args=[render_id, status, record]))

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

    def reset_failed(self, job_id: str) -> list[str]:
        keys = [self._job(job_id), self._states(job_id), self._crashes(job_id)]
        return list(self._reset(keys=keys))

    def mark_finished(self, job_id: str) -> None:
        info = self.get(job_id)
        status = "cancelled" if info and info.cancelled else "done"
        self.r.hset(self._job(job_id), mapping={"status": status, "finished": repr(time.time())})

    # reports
    def summary(self, job_id: str) -> Summary:
        info = self.get(job_id)
        if info is None:
            raise KeyError(job_id)
        states = self.states(job_id)
        records = []
        for render in sorted(self.specs(job_id), key=lambda r: (r.content, r.style, r.size)):
            record = RenderRecord.of(render, info.location.uri_of(render.key))
            state = states.get(render.id, {})
            record.status = state.get("status", "pending")
            if record.status == "running":
                record.status = "pending"
            record.seconds = state.get("seconds")
            record.error = state.get("error")
            record.weights_id = state.get("weights_id")
            record.losses = state.get("losses")
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
