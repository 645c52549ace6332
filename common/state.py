"""The fleet's state in Redis, and the only module that writes it: jobs, renders, workers'
heartbeats, locks, schedule slots and beat markers, webhook deliveries and counters.

Every change with a rule is one Lua script in ``common/lua/`` (one file per operation, each
opening with the transitions it allows), so it is atomic and can be read whole. Render states
(``RENDER_TRANSITIONS``)::

    pending -> running                 claim: a new attempt, whose number is the fencing token
    running -> done | skipped | failed | cancelled     finish, by the attempt that holds it
    running -> pending                 release (transient, configuration or device error) by
                                       its attempt; reap (its owner went silent): one crash
    running -> failed                  crash cap, device-error cap, or its task's errback
    failed  -> pending                 only through `stylebatch retry`

A transition that carries an attempt other than the render's current one is *superseded*:
refused, logged by the caller and counted (``superseded`` in the fleet counters), never
recorded as an outcome. The first terminal state wins and is counted once, and exactly one
caller learns that the job's last render ended (the job moves to finalizing); one finalize
holds the job's end at a time, and one caller ends it. Times come from the Redis server's
clock. Other modules read through ``JobStore.read``, which has no write commands.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any

import redis

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
    "pending": ("running", *TERMINAL),  # terminal from pending: only the crash cap's give-up
    "running": ("pending", *TERMINAL),
    "failed": ("pending",),  # retry only
}
JOB_TRANSITIONS = {
    "running": ("finalizing",),
    "finalizing": JOB_TERMINAL,
    "done": ("running",),  # retry of failed renders
    "failed": ("running",),
}
LUA = Path(__file__).with_name("lua")
STAGING_TTL = 24 * 3600  # a killed submit's staged specs and states expire after this
SUBMIT_LEASE = 120  # seconds a submit holds its job while creating and enqueueing it


class Incomplete(redis.RedisError):
    """A create whose staged renders were gone when it came to make the job visible (they
    expired): nothing was made; submitting again stages them afresh."""


@cache
def script_source(name: str) -> str:
    """One operation's script, with the shared prelude."""
    body = (LUA / f"{name}.lua").read_text()
    body = body.replace("__BUCKETS__", ", ".join(map(str, RENDER_SECONDS_BUCKETS)))
    return (LUA / "prelude.lua").read_text() + "\n" + body


SCRIPTS = tuple(sorted(p.stem for p in LUA.glob("*.lua") if p.stem != "prelude"))

# What other modules may call on Redis: reads only (JobStore.read).
READ_COMMANDS = frozenset(
    {
        *("get", "mget", "hget", "hgetall", "hmget", "hlen", "hexists", "hscan_iter"),
        *("sscan_iter", "smembers", "scard", "sismember", "zrange", "zrevrange"),
        *("zrangebyscore", "zrangebylex", "zscore", "zcard", "llen", "lrange", "lindex"),
        *("exists", "ttl"),
        *("pttl", "time", "info", "memory_usage", "ping", "type"),
    }
)


class ReadOnly:
    """A Redis client (or pipeline) that only reads: every other module's view of the state."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name in READ_COMMANDS or name == "execute":
            return getattr(self._client, name)
        raise AttributeError(f"{name!r}: only common/state.py writes to Redis")

    def pipeline(self) -> ReadOnly:
        return ReadOnly(self._client.pipeline(transaction=False))


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
    def outcome(self) -> str | None:
        """How an ended job came out: ``succeeded`` (every render done or skipped),
        ``partial`` (it ended with renders failed), ``failed`` or ``cancelled``; None while it
        runs. A job is ``done`` once its renders have all ended, whatever they came to: this
        says which."""
        if not self.terminal:
            return None
        if self.status == "done":
            return "partial" if self.count("failed") else "succeeded"
        return self.status

    @property
    def headline(self) -> str:
        """The state in words, failures always counted: what the CLI, the pages, the API and
        the webhook say."""
        total, failed = self.total, self.count("failed")
        ended = total - self.pending - self.running
        also = f", {failed} failed" if failed else ""
        if self.status == "done":
            if failed:
                return f"done with failures: {failed} of {total} renders failed"
            return f"done: all {total} renders succeeded" if total else "done: no renders"
        if self.status == "cancelled":
            return f"cancelled: {self.count('cancelled')} of {total} renders cancelled{also}"
        if self.status == "failed":
            return f"failed: {self.meta.get('reason') or 'no reason recorded'}{also}"
        if self.status == "finalizing":
            return f"finalizing: all {total} renders ended{also}; writing the summary"
        return f"{self.status}: {ended} of {total} renders ended{also}"

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
    """What a task may do with a render: ``claimed`` (render it, as ``attempt``), ``busy`` (a
    live worker has it: a duplicate delivery, ignore), ``ended`` (already terminal: ignore),
    ``gave_up`` (its worker died too often: recorded failed; ``complete`` if that ended the
    job's last render)."""

    outcome: str
    crashes: int = 0
    detail: str = ""
    complete: bool = False
    attempt: int = 0


@dataclass(frozen=True)
class Held:
    """A render as one attempt holds it: what finish and release carry."""

    job_id: str
    render_id: str
    attempt: int
    owner: str = ""  # the claiming process ('' in tests: the attempt alone fences)

    @property
    def field(self) -> str:
        return running_field(self.job_id, self.render_id)


@dataclass
class Beat:
    """A heartbeat's answer: the Redis time, and the held renders that are no longer this
    process's (superseded: reaped and taken by another attempt, or ended)."""

    time: float
    stale: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Rate:
    """A request measured against a team's rate: whether it may go, how many more may now,
    the burst, seconds until the bucket is full again, and until one more may go."""

    allowed: bool
    remaining: int
    limit: int
    reset: float
    retry_after: float


FINISH = {-2: "superseded", -1: "missing", 0: "ended", 1: "recorded", 2: "complete"}

# How a job's renders are indexed at create (one sorted set, all scores 0, read by range of
# prefix): every render, and by style, size (or channel) and content name.
INDEX_FACETS = ("a", "s", "z", "c")
FACETS_LISTED = 200  # styles and sizes named in the job record (the pages' filters)


def index_entries(render: Render) -> tuple[str, ...]:
    """Its entries in the job's render index: by id, style (its copies' names too), size and
    content."""
    rid = render.id
    styles = dict.fromkeys((render.style, *(s for s, _ in render.copies)))
    return (
        f"a\0{rid}",
        *(f"s\0{style}\0{rid}" for style in styles),
        f"z\0{render.size}\0{rid}",
        f"c\0{render.content_name}\0{rid}",
    )


class Facets:
    """The job's styles, sizes (or channels) and contents, gathered render by render."""

    def __init__(self, renders: Iterable[Render] = ()):
        self.styles: set[str] = set()
        self.sizes: set[str] = set()
        self.contents: set[str] = set()
        for render in renders:
            self.add(render)

    def add(self, render: Render) -> None:
        self.styles.add(render.style)
        self.styles.update(style for style, _ in render.copies)
        self.sizes.add(str(render.size))
        self.contents.add(render.content_name)

    def record(self) -> dict[str, Any]:
        """What the job record keeps: the styles and sizes (at most FACETS_LISTED each,
        long sides first, then channels) and how many contents."""
        sizes = sorted(self.sizes, key=lambda s: (not s.isdigit(), len(s), s))
        return {
            "styles": sorted(self.styles)[:FACETS_LISTED],
            "sizes": sizes[:FACETS_LISTED],
            "contents": len(self.contents),
        }


def _matches(render: Render, state: dict[str, Any], wanted: dict[str, str | None]) -> bool:
    status = state.get("status", "pending")
    have = {"status": status, "size": str(render.size), "content": render.content_name}
    styles = {render.style, *(s for s, _ in render.copies)}
    return all(
        v is None or (v in styles if k == "style" else have[k] == v) for k, v in wanted.items()
    )


@dataclass
class RenderPage:
    """A page of a job's renders: (spec, state) each, the cursor of the next page (None at the
    end) and how many candidates were read."""

    renders: list[tuple[Render, dict[str, Any]]]
    next: str | None
    scanned: int


def running_field(job_id: str, render_id: str) -> str:
    return f"{job_id} {render_id}"


class JobStore:
    ACTIVE = f"{PREFIX}:active"  # jobs not yet ended: what the reconciler looks at
    JOBS = f"{PREFIX}:jobs"  # every job by creation time: `stylebatch jobs`
    RUNNING = f"{PREFIX}:running"  # "job render" -> "owner attempt", every running render
    HEARTBEATS = f"{PREFIX}:heartbeats"  # owner -> last beat (Redis time)
    WORKERS = f"{PREFIX}:workers"  # owner -> its description and health (JSON)
    METRICS = f"{PREFIX}:metrics"  # fleet-wide counters (scheduler/metrics.py)

    def __init__(self, client: redis.Redis, job_ttl: int = 30 * 24 * 3600, replicas: int = 0):
        self.r = client
        self.job_ttl = job_ttl  # seconds an ended job's state is kept (STYLEBATCH_JOB_TTL)
        self.replicas = replicas  # that must hold an end before it is acted on (WAIT)
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    @property
    def read(self) -> ReadOnly:
        return ReadOnly(self.r)

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    def _run_durably(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, bool]:
        """Run a script, then WAIT (on the same connection) until ``replicas`` replicas hold
        its writes: (result, whether they do). Without replicas to wait for: always held."""
        if self.replicas <= 0:
            return self._run(name, keys, args), True
        pipe = self.r.pipeline(transaction=False)
        self._scripts[name](keys=keys, args=args, client=pipe)
        pipe.wait(self.replicas, 2000)
        result, acked = pipe.execute()
        return result, int(acked) >= self.replicas

    @classmethod
    def from_settings(cls, settings: Any, retries: int = 20) -> JobStore:
        """The store for a deployment: plain Redis or through Sentinel (common/redis_client.py),
        riding out restarts and failovers with retries."""
        from common.redis_client import client

        replicas = settings.redis_wait_replicas
        if replicas < 0:
            replicas = 1 if settings.redis_sentinels else 0
        return cls(client(settings, retries=retries), settings.job_ttl, replicas)

    @classmethod
    def from_url(cls, url: str, tls_ca: str = "", retries: int = 20) -> JobStore:
        """A store for one Redis URL (tests and benchmarks)."""
        from common.settings import Settings

        return cls.from_settings(Settings(redis_url=url, redis_tls_ca=tls_ca), retries)

    # keys
    def _job(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    def _specs(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:specs"

    def _states(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:states"

    def _crashes(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:crashes"  # beat.lua derives the same name

    def _devices(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}:device_errors"

    def _failed(self, job_id: str) -> str:
        """The ids of its failed renders (the Lua prelude derives the same name)."""
        return f"{PREFIX}:job:{job_id}:failed"

    def _index(self, job_id: str) -> str:
        """Its renders by style, size and content (made at create; ``renders_page``)."""
        return f"{PREFIX}:job:{job_id}:index"

    def _ended(self, job_id: str) -> str:
        """Its ended renders by state (the Lua prelude derives the same name)."""
        return f"{PREFIX}:job:{job_id}:ended"

    def _team(self, team: str) -> str:
        return f"{PREFIX}:team:{team}:jobs"  # a web team's jobs by creation time

    def _reaped(self, job_id: str, render_id: str) -> str:
        return f"{PREFIX}:reaped:{job_id}:{render_id}"  # beat.lua derives the same name

    def _job_keys(self, job_id: str) -> list[str]:
        return [
            self._job(job_id),
            self._specs(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self._devices(job_id),
            self._failed(job_id),
            f"{PREFIX}:job:{job_id}:pauses",  # beat.lua derives the same name
            self._index(job_id),
            self._ended(job_id),
        ]

    def count_failure(self, what: str) -> None:
        """A fleet-wide failure counter: ``finalize`` or ``webhook``."""
        self.r.hincrby(self.METRICS, f"failures:{what}", 1)

    def now(self) -> float:
        """The Redis server's clock, which every transition and heartbeat uses."""
        seconds, micros = self.r.time()
        return seconds + micros / 1e6

    # creation
    def create(self, plan: JobPlan, force: bool = False, team: str = "") -> bool:
        """Record a new job, whole; False if it already exists (and ``force`` is not set).
        Specs, states and the render index are staged in chunks first, where nothing looks,
        then one script makes the job visible with all of them: a submit killed part way leaves
        no job, and the next one stages again. The job is marked ``sent`` once all its tasks
        are published. ``team``: the web team that submitted it (scheduler/web), which alone
        sees it there; listed under ``jobs(team=...)``."""
        job_id = plan.job_id
        if force:
            self.delete(job_id)
        elif self.r.exists(self._job(job_id)):
            return False
        attempt = secrets.token_hex(6)  # this attempt's own staging: a racing submit's are apart
        staged = [
            f"{self._specs(job_id)}:staging:{attempt}",
            f"{self._states(job_id)}:staging:{attempt}",
            f"{self._index(job_id)}:staging:{attempt}",
        ]
        for i in range(0, len(plan.renders), 1000):
            chunk = plan.renders[i : i + 1000]
            pipe = self.r.pipeline(transaction=False)
            pipe.hset(
                staged[0],
                mapping={r.id: json.dumps(r.to_dict(), separators=(",", ":")) for r in chunk},
            )
            pipe.hset(
                staged[1], mapping=dict.fromkeys((r.id for r in chunk), '{"status":"pending"}')
            )
            pipe.zadd(staged[2], dict.fromkeys((m for r in chunk for m in index_entries(r)), 0))
            for key in staged:
                pipe.expire(key, STAGING_TTL)
            pipe.execute()
        loc = plan.location
        record = {
            "name": plan.name,
            "source": plan.source,
            "location": json.dumps([loc.scheme, loc.root, loc.prefix]),
            "format": plan.format,
            "quality": plan.manifest.output.quality,
            "weights": plan.weights,
            "priority": plan.manifest.priority,
            "webhook": plan.manifest.notify.webhook if plan.manifest.notify else "",
            # signing as planned (and in the render ids), not as each worker's setting says
            "credentials": "1" if plan.signed else "0",
            "team": team,
            "facets": json.dumps(Facets(plan.renders).record()),
            "outputs": sum(len(r.keys) for r in plan.renders),
        }
        keys = [
            self._job(job_id),
            *staged[:2],
            self._specs(job_id),
            self._states(job_id),
            self.JOBS,
            self.ACTIVE,
            staged[2],
            self._index(job_id),
            self._team(team or "-"),
        ]
        entries = sum(len(index_entries(r)) for r in plan.renders)
        outcome, held = self._run_durably(
            "create", keys, [job_id, json.dumps(record), len(plan.renders), entries, team]
        )
        if outcome != "created":  # another submit made it first: this attempt's staging goes
            self.r.delete(*staged)
        if outcome == "incomplete":  # this attempt's staging expired under it
            raise Incomplete(f"job {job_id}: staged renders incomplete; submit again")
        if not held:  # a failover now could lose it: the caller must not report it made
            raise redis.RedisError(f"job {job_id}: not yet on a replica; submit again")
        return outcome == "created"

    def hold_submit(self, job_id: str, token: str, seconds: float = SUBMIT_LEASE) -> bool:
        """Take (or renew) the lease of submitting ``job_id``: held from before create until
        its tasks are all sent, so a submit racing it neither stages over it nor re-drives
        what it is still sending. A submit killed holding it leaves it to expire; the next
        submit after that recovers the job (scheduler/submit.py)."""
        return self.lease(f"submit:{job_id}", token, seconds)

    def release_submit(self, job_id: str, token: str) -> None:
        self.let_go(f"submit:{job_id}", token)

    def mark_sent(self, job_id: str) -> None:
        self._run("touch", [self._job(job_id)], ["sent", "1"])

    def touch(self, job_id: str) -> None:
        self._run("touch", [self._job(job_id)], [])

    def touch_finalizing(self, job_id: str) -> None:
        self._run("touch", [self._job(job_id)], ["finalizing_since", "@now"])

    def delete(self, job_id: str) -> None:
        team = self.r.hget(self._job(job_id), "team")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*self._job_keys(job_id))
        pipe.zrem(self.JOBS, job_id)
        if team:
            pipe.zrem(self._team(team), job_id)
        pipe.srem(self.ACTIVE, job_id)
        pipe.execute()

    def cancel(self, job_id: str) -> str:
        """Ask for a running job's cancel: ``requested``; a job whose renders have all ended
        (``finalizing``) or that has ``ended`` is left as it is; ``missing``."""
        return self._run("cancel", [self._job(job_id)], [])

    def drop_active(self, job_id: str) -> bool:
        """Off the reconciler's list, if the job ended or is gone."""
        return bool(self._run("drop_active", [self._job(job_id), self.ACTIVE], [job_id]))

    # reading
    def get(self, job_id: str) -> JobInfo | None:
        """The job's record; None where there is none. A key that is not a job's record (a
        job's own ``:index`` or ``:specs``, named by a crafted id) is no job either."""
        try:
            meta = self.r.hgetall(self._job(job_id))
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                return None
            raise
        return JobInfo(job_id, meta) if meta and "location" in meta else None

    def jobs(self, limit: int = 50, offset: int = 0, team: str | None = None) -> list[JobInfo]:
        """Newest first, one page: of every job, or of one web team's."""
        index = self.JOBS if team is None else self._team(team)
        ids = self.r.zrevrange(index, offset, offset + limit - 1)
        return [info for job_id in ids if (info := self.get(job_id))]

    def jobs_after(
        self, limit: int, after: str = "", team: str | None = None, budget: int = 2000
    ) -> tuple[list[JobInfo], str | None]:
        """Newest first, one page after the cursor ``after`` (``<created>:<job id>`` of the
        last job looked at before; '' for the first page): the page, and the cursor of the
        next one (None at the end). A cursor stays good while jobs are added or expire: it
        names a place in time, not an offset. Ids whose job expired are passed over, at most
        ``budget`` of them per page (the page is then short: follow the cursor)."""
        index = self.JOBS if team is None else self._team(team)
        top, last = "+inf", ""
        if after:
            score, _, last = after.partition(":")
            try:
                top = repr(float(score))
            except ValueError:
                top, last = "+inf", ""
        found: list[JobInfo] = []
        start, looked, cursor = 0, 0, None
        while len(found) < limit and looked < budget:
            chunk = self.r.zrevrangebyscore(index, top, "-inf", start, 200, withscores=True)
            if not chunk:
                return found, None
            start += len(chunk)
            for job_id, score in chunk:
                if last and repr(score) == top and job_id >= last:
                    continue  # the cursor's job, or one before it at the same instant
                looked += 1
                cursor = f"{score!r}:{job_id}"
                info = self.get(job_id)
                if info is not None:
                    found.append(info)
                if len(found) == limit or looked >= budget:
                    break
        if cursor is None:
            return found, None
        score, _, job_id = cursor.partition(":")
        older = self.r.zcount(index, "-inf", f"({score}")
        same = [j for j in self.r.zrangebyscore(index, score, score) if j < job_id]
        return found, cursor if older or same else None

    def count_jobs(self, team: str | None = None) -> int:
        """How many jobs ``jobs`` pages through (of every job, or of one web team's)."""
        return int(self.r.zcard(self.JOBS if team is None else self._team(team)))

    def ping(self) -> bool:
        return bool(self.r.ping())

    def slot_jobs(self, name: str, labels: list[str]) -> dict[str, str]:
        """label -> the job that holds that slot of a scheduled manifest (those claimed)."""
        if not labels:
            return {}
        held = self.r.mget([f"{PREFIX}:slot:{name}:{label}" for label in labels])
        return {label: job for label, job in zip(labels, held, strict=True) if job}

    def render(self, job_id: str, render_id: str) -> tuple[Render, dict[str, Any]] | None:
        """One render's spec and state, or None if the job has no such render."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self._specs(job_id), render_id)
        pipe.hget(self._states(job_id), render_id)
        spec, state = pipe.execute()
        if not spec:
            return None
        return Render.from_dict(json.loads(spec)), json.loads(state) if state else {}

    def renders_page(
        self,
        job_id: str,
        status: str | None = None,
        style: str | None = None,
        size: str | None = None,
        content: str | None = None,
        limit: int = 50,
        after: str = "",
        budget: int = 2000,
    ) -> RenderPage:
        """One page of a job's renders, in render-id order, after the cursor ``after`` (a
        render id), matching every filter given. What it reads is bounded by ``limit`` and
        ``budget`` (candidates looked at), never by the job's size: it walks the narrowest
        index that applies (the ended renders of one state; the running ones, fleet-wide a few
        per worker; else the renders of one style, size or content), a few hundred at a time,
        and checks the other filters on those. ``next`` is the cursor for the page after this
        one (None at the end); a page may hold fewer than ``limit`` when the budget ran out
        first: follow ``next``."""
        wanted = {"status": status, "style": style, "size": size, "content": content}
        if status in TERMINAL:
            source = self._lex(self._ended(job_id), f"{status}\0", after)
        elif status == "running":
            source = iter(sorted(self._running_of(job_id, after)))
        else:
            facet, value = next(
                ((f, v) for f, v in (("s", style), ("z", size), ("c", content)) if v is not None),
                ("a", None),
            )
            prefix = f"{facet}\0" if value is None else f"{facet}\0{value}\0"
            source = self._lex(self._index(job_id), prefix, after)
        found: list[tuple[Render, dict[str, Any]]] = []
        scanned, last, more = 0, after, True
        while more and len(found) < limit and scanned < budget:
            want = min(200, budget - scanned)
            batch = list(islice(source, want))
            more = len(batch) == want  # a short batch: the index ran out (else maybe more)
            scanned += len(batch)
            pipe = self.r.pipeline(transaction=False)
            pipe.hmget(self._specs(job_id), batch or ["-"])
            pipe.hmget(self._states(job_id), batch or ["-"])
            specs, states = pipe.execute()
            for i, (rid, spec, state) in enumerate(zip(batch, specs, states, strict=False)):
                last = rid
                if not spec:
                    continue
                render = Render.from_dict(json.loads(spec))
                record = json.loads(state) if state else {"status": "pending"}
                if _matches(render, record, wanted):
                    found.append((render, record))
                    if len(found) >= limit:
                        more = more or i < len(batch) - 1
                        break
        return RenderPage(found, last if more else None, scanned)

    def index_recorded(self, job_id: str) -> bool:
        """Index a job recorded before the render index existed (its record has no
        ``facets``), as create does now: its renders by style, size and content, its ended
        renders by state, and its facets. Reads its specs and states once, O(renders), once
        per job (the web front calls it on such a job's first read: scheduler/web/core.py),
        building under keys of its own that one script swaps in (index_recorded.lua); two
        callers at once build the same thing. False where there was nothing to do."""
        job = self._job(job_id)
        if not self.r.exists(job) or self.r.hexists(job, "facets"):
            return False
        token = secrets.token_hex(4)
        built = [f"{self._index(job_id)}:built:{token}", f"{self._ended(job_id)}:built:{token}"]
        gathered = Facets()

        def add(key: str, members: list[str]) -> None:
            pipe = self.r.pipeline(transaction=False)
            pipe.zadd(key, dict.fromkeys(members, 0))
            pipe.expire(key, STAGING_TTL)  # a caller killed part way leaves nothing for long
            pipe.execute()

        members: list[str] = []
        for _, raw in self.r.hscan_iter(self._specs(job_id), count=1000):
            render = Render.from_dict(json.loads(raw))
            gathered.add(render)
            members.extend(index_entries(render))
            if len(members) >= 4000:
                add(built[0], members)
                members = []
        if members:
            add(built[0], members)
        ended = []
        for rid, raw in self.r.hscan_iter(self._states(job_id), count=1000):
            status = json.loads(raw).get("status")
            if status in TERMINAL:
                ended.append(f"{status}\0{rid}")
            if len(ended) >= 4000:
                add(built[1], ended)
                ended = []
        if ended:
            add(built[1], ended)
        keys = [job, built[0], self._index(job_id), built[1], self._ended(job_id)]
        return bool(self._run("index_recorded", keys, [json.dumps(gathered.record())]))

    def _lex(self, key: str, prefix: str, after: str) -> Iterator[str]:
        """Render ids of the index entries under ``prefix``, after ``after``, a page at a
        time (ZRANGEBYLEX: O(log N) per page)."""
        low = f"({prefix}{after}" if after else f"[{prefix}"
        while True:
            page = self.r.zrangebylex(key, low, f"[{prefix}\x7f", start=0, num=200)
            for member in page:
                yield member[len(prefix) :]
            if len(page) < 200:
                return
            low = f"({page[-1]}"

    def _running_of(self, job_id: str, after: str) -> list[str]:
        """This job's running renders, from the fleet's running hash (a few per worker)."""
        return [
            fld.split(" ", 1)[1]
            for fld, _ in self.r.hscan_iter(self.RUNNING, match=f"{job_id} *", count=1000)
            if fld.split(" ", 1)[1] > after
        ]

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

    def holds(self, held: Held, owner: str) -> bool:
        """Whether this attempt still holds its render (checked before an output is written)."""
        return self.r.hget(self.RUNNING, held.field) == f"{owner} {held.attempt}"

    # render transitions
    def claim(
        self,
        job_id: str,
        render_id: str,
        owner: str,
        liveness: float,
        max_crashes: int,
        dead_owner: str = "",
        task: str = "",
    ) -> Claim:
        """Take a render for ``owner`` as a new attempt. A render running under another owner
        whose heartbeat is older than ``liveness`` seconds (or ``dead_owner``, known dead)
        counts a crash. ``task`` is the claiming task's id (its errback fails only these)."""
        keys = [
            self._job(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self.RUNNING,
            self.HEARTBEATS,
        ]
        fld = running_field(job_id, render_id)
        reaped = self._reaped(job_id, render_id)
        args = [render_id, owner, liveness, max_crashes, dead_owner, fld, task, reaped]
        outcome, detail, attempt = self._run("claim", keys, args)
        if outcome == "claimed":
            return Claim("claimed", crashes=int(detail), attempt=int(attempt))
        if outcome == "gave_up":
            return Claim("gave_up", crashes=max_crashes, complete=detail == "2")
        return Claim(outcome, detail=detail)

    def finish(self, held: Held, status: str, **fields: Any) -> str:
        """Record a terminal state for the attempt that holds the render: ``recorded``,
        ``complete`` (recorded, and it ended the job's last render), ``ended`` (already
        terminal), ``superseded`` (another attempt holds it: refused) or ``missing``."""
        assert status in TERMINAL, status
        record = json.dumps({"status": status, **fields})
        keys = [self._job(held.job_id), self._states(held.job_id), self.RUNNING, self.METRICS]
        args = [held.render_id, status, record, held.field, held.attempt, held.owner]
        return FINISH[int(self._run("finish", keys, args))]

    def release(
        self, held: Held, owner: str, device_error: bool = False, max_device_errors: int = 0,
        reason: str = "",
    ) -> str:  # fmt: skip
        """Back to pending, if this attempt holds it (a transient, configuration or device
        error is no crash): ``released``; with ``device_error``, one counted against the
        render, and at ``max_device_errors`` ``failed`` (or ``complete``: it ended the job)
        instead; else ``superseded``, ``ended`` or ``missing``."""
        keys = [
            self._job(held.job_id),
            self._states(held.job_id),
            self.RUNNING,
            self._devices(held.job_id),
            self.METRICS,
        ]
        args = [held.render_id, owner, held.field, held.attempt]
        args += ["1" if device_error else "", max_device_errors, reason]
        outcome, detail = self._run("release", keys, args)
        return "complete" if outcome == "failed" and detail == "2" else outcome

    def reap(self, job_id: str, render_id: str, silent_owner: str, max_crashes: int) -> Claim:
        """A render whose owner went silent: one crash, then pending again (or failed at the
        cap). Taken back if the owner's heartbeat resumes."""
        keys = [
            self._job(job_id),
            self._states(job_id),
            self._crashes(job_id),
            self.RUNNING,
            self._reaped(job_id, render_id),
        ]
        args = [render_id, silent_owner, max_crashes, running_field(job_id, render_id)]
        outcome, detail = self._run("reap", keys, args)
        if outcome == "gave_up":
            return Claim("gave_up", crashes=max_crashes, complete=detail == "2")
        return Claim(outcome, crashes=int(detail))

    def fail_task(self, job_id: str, task: str, render_ids: list[str], reason: str) -> bool:
        """Fail the renders that task ``task`` claimed and still holds (its errback); True if
        that ended the job's last render."""
        keys = [self._job(job_id), self._states(job_id), self.RUNNING, self.METRICS]
        _, complete = self._run("fail_task", keys, [task, reason, job_id, *render_ids])
        return bool(complete)

    def crashes(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(self._crashes(job_id)).items()}

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
            self._ended(job_id),
            self._index(job_id),
        ]
        return list(self._run("reset_failed", keys, [job_id]))

    # job transitions
    def begin_finalize(self, job_id: str, token: str, lease: float) -> str:
        """Lease the job's end for one finalize: ``ok``, ``busy`` (another holds it), or the
        job's status if it is not finalizing."""
        return self._run("begin_finalize", [self._job(job_id)], [token, lease])

    def end_job(self, job_id: str, status: str = "done", reason: str = "", token: str = "") -> str:
        """finalizing -> done (cancelled if a cancel was asked for) or failed with a reason, by
        the finalize holding the lease (``token``; '' for anyone). Returns the end's time
        (the webhook's delivery id derives from it) to exactly one caller, else ''."""
        assert status in ("done", "failed"), status
        keys = [self._job(job_id), self.ACTIVE, *self._job_keys(job_id)[1:]]
        outcome, finished = self._run(
            "end_job", keys, [job_id, status, reason, self.job_ttl, token]
        )
        return finished if outcome == "ok" else ""

    # webhook deliveries
    def claim_delivery(
        self, job_id: str, delivery: str, token: str, lease: float
    ) -> tuple[str, int]:
        """(``claimed`` | ``delivered`` | ``busy`` | ``stale``, attempts so far)."""
        outcome, attempts = self._run(
            "claim_delivery", [self._job(job_id)], [delivery, token, lease]
        )
        return outcome, int(attempts)

    def delivery_outcome(
        self, job_id: str, delivery: str, token: str, status: str, outcome: str, hold: float = 0
    ) -> bool:
        keys = [self._job(job_id), self.METRICS]
        return bool(self._run("delivery_outcome", keys, [delivery, token, status, outcome, hold]))

    WEBHOOKS = f"{PREFIX}:webhooks"  # jobs whose end's delivery is owed (end_job.lua)

    def owed_webhooks(self, older_than: float) -> list[tuple[str, str]]:
        """(job, delivery id) for each job end, ``older_than`` seconds ago or more, whose
        webhook is neither delivered nor given up and that no notify task holds now (its
        message was lost, or its claim ran out)."""
        now = self.now()
        out = []
        for job_id in sorted(self.r.smembers(self.WEBHOOKS)):
            job = self._job(job_id)
            delivery, until, finished = self.r.hmget(
                job, "webhook_delivery", "webhook_until", "finished"
            )
            if delivery is None:  # the job is gone
                self.r.srem(self.WEBHOOKS, job_id)
            elif float(until or 0) < now and float(finished or now) <= now - older_than:
                out.append((job_id, delivery))
        return out

    # schedules
    def claim_slot(self, name: str, label: str, job_id: str) -> str | None:
        """Claim a schedule slot for a job: None if claimed now, else the job that holds it."""
        key = f"{PREFIX}:slot:{name}:{label}"
        if self.r.set(key, job_id, nx=True, ex=400 * 24 * 3600):
            return None
        return self.r.get(key)

    def beat_marker(self, name: str) -> float | None:
        """The last slot beat fired for a scheduled manifest (UTC timestamp), or None."""
        value = self.r.get(f"{PREFIX}:beat:last:{name}")
        return float(value) if value is not None else None

    def set_beat_marker(self, name: str, timestamp: float, if_absent: bool = False) -> bool:
        return bool(self.r.set(f"{PREFIX}:beat:last:{name}", timestamp, nx=if_absent))

    # locks
    def lease(self, name: str, token: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``token``; False while another holds it."""
        ms = max(1, int(seconds * 1000))
        return bool(self._run("lock", [f"{PREFIX}:lock:{name}"], [token, ms]))

    def let_go(self, name: str, token: str) -> None:
        self._run("unlock", [f"{PREFIX}:lock:{name}"], [token])

    @staticmethod
    def token() -> str:
        return secrets.token_hex(8)

    # the web front: sessions, rates, idempotency keys (scheduler/web)
    def open_session(self, team: str, seconds: int) -> str:
        """A new session of ``team`` for ``seconds``: its id (random, the cookie's value).
        Only its digest is a key, so reading Redis gives no one a session. A plain SET: one
        new key, nothing else to keep in step."""
        session = secrets.token_urlsafe(32)
        self.r.set(self._session(session), team, ex=seconds, nx=True)
        return session

    def session_team(self, session: str) -> str | None:
        """The team of a live session, or None (unknown, expired or ended)."""
        if not session or len(session) > 100:
            return None
        return self.r.get(self._session(session))

    def end_session(self, session: str) -> None:
        """Log out: the session is gone everywhere at once (a plain DEL of its one key)."""
        if session and len(session) <= 100:
            self.r.delete(self._session(session))

    def _session(self, session: str) -> str:
        return f"{PREFIX}:session:{hashlib.sha256(session.encode()).hexdigest()}"

    def take_rate(self, team: str, kind: str, interval_ms: int, burst: int) -> Rate:
        """One request of ``team`` against its ``kind`` of rate (rate.lua)."""
        allowed, left, full_ms, wait_ms = self._run(
            "rate", [f"{PREFIX}:rate:{team}:{kind}"], [max(1, interval_ms), max(1, burst)]
        )
        return Rate(bool(allowed), int(left), burst, int(full_ms) / 1000, int(wait_ms) / 1000)

    def idempotency(self, team: str, key: str, step: str, digest: str, *args: Any) -> list[str]:
        """A POST's Idempotency-Key (idempotency.lua): ``begin``, ``end`` or ``drop``."""
        name = hashlib.sha256(f"{team}\0{key}".encode()).hexdigest()
        return list(self._run("idempotency", [f"{PREFIX}:idem:{name}"], [step, digest, *args]))

    # worker liveness
    def beat(self, owner: str, description: dict[str, Any], held: list[Held] = ()) -> Beat:
        """Record that ``owner`` (a worker process) is alive, and learn which of the renders
        it holds have been taken from it."""
        keys = [self.HEARTBEATS, self.WORKERS, self.RUNNING]
        args: list[Any] = [owner, json.dumps(description)]
        for h in held:
            args += [h.job_id, h.render_id, h.attempt]
        t, stale = self._run("beat", keys, args)
        return Beat(float(t), set(stale))

    def forget(self, owner: str, silent_before: float | None = None) -> bool:
        """Drop a worker from the roll (only if still silent since ``silent_before``)."""
        args = [owner, "" if silent_before is None else silent_before]
        return bool(self._run("forget", [self.HEARTBEATS, self.WORKERS], args))

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every known worker process: its description, health and seconds since its beat."""
        now = self.now()
        beats = dict(self.r.zrange(self.HEARTBEATS, 0, -1, withscores=True))
        out = {}
        for owner, raw in self.r.hgetall(self.WORKERS).items():
            out[owner] = {**json.loads(raw), "age": now - beats.get(owner, 0.0)}
        return out

    def beating(self) -> set[str]:
        return set(self.r.zrange(self.HEARTBEATS, 0, -1))

    def silent_owners(self, liveness: float) -> list[str]:
        """Owners whose last heartbeat is older than ``liveness`` seconds."""
        return list(self.r.zrangebyscore(self.HEARTBEATS, "-inf", self.now() - liveness))

    def running_renders(self) -> list[tuple[str, str, str]]:
        """(job, render, owner) for every running render, fleet-wide."""
        out = []
        for fld, value in self.r.hscan_iter(self.RUNNING, count=1000):
            job_id, render_id = fld.split(" ", 1)
            out.append((job_id, render_id, value.rsplit(" ", 1)[0]))
        return out

    def fleet_counters(self) -> dict[str, str]:
        return self.r.hgetall(self.METRICS)

    # retention
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
        for job_id in self.r.zrange(self.JOBS, 0, -1):
            info = self.get(job_id)
            if info is None:
                self.r.zrem(self.JOBS, job_id)
                freed["expired_ids"] += 1
            elif info.terminal and float(info.meta.get("finished") or 0) <= cutoff:
                freed["bytes"] += self.memory(job_id)
                self.delete(job_id)
                freed["jobs"] += 1
        for index in self.r.scan_iter(match=self._team("*"), count=1000):  # web teams' lists
            for job_id in self.r.zrange(index, 0, -1):
                if not self.r.exists(self._job(job_id)):
                    self.r.zrem(index, job_id)
                    freed["expired_ids"] += 1
        return freed

    # reports
    def summary(self, job_id: str) -> Summary:
        info = self.get(job_id)
        if info is None:
            raise KeyError(job_id)
        states = self.states(job_id)
        records = []
        order = lambda r: (r.content, r.style, parse_size(r.size).pixels, str(r.size))  # noqa: E731
        for render in sorted(self.specs(job_id), key=order):
            record = RenderRecord.of(render, info.location.uri_of(render.key), info.location)
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
