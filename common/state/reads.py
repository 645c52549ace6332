"""Reading the fleet's state: queries over a read-only client (``ReadOnly`` has no write
command), which every other module gets as ``JobStore.read`` and the store's own queries use
as ``self.q``. Every query is bounded by a page or a budget, never by a job's size."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from itertools import islice
from typing import Any

import redis

from common.expand import Render
from common.sizes import parse_size
from common.state import keys
from common.state.keys import JobKeys
from common.state.model import (
    TERMINAL,
    Held,
    JobInfo,
    RenderPage,
    _matches,
)
from common.summary import RenderRecord, Summary

# What a read-only client may call: reads only.
READ_COMMANDS = frozenset(
    {
        *("get", "mget", "hget", "hgetall", "hmget", "hlen", "hexists", "hscan_iter"),
        *("sscan_iter", "smembers", "scard", "sismember", "zrange", "zrevrange"),
        *(
            "zrangebyscore",
            "zrevrangebyscore",
            "zrangebylex",
            "zrevrangebylex",
            "zscore",
            "zcard",
            "zcount",
        ),
        *("llen", "lrange", "lindex", "exists", "ttl", "pttl", "time", "info", "memory_usage"),
        *("ping", "type", "config_get"),
    }
)


class ReadOnly:
    """A Redis client (or pipeline) that only reads: every other module's view of the state."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name in READ_COMMANDS or name == "execute":
            return getattr(self._client, name)
        raise AttributeError(f"{name!r}: only common/state writes to Redis")

    def pipeline(self) -> ReadOnly:
        return ReadOnly(self._client.pipeline(transaction=False))


def session_digest(session: str) -> str:
    """A session is kept under its id's digest: reading Redis gives no one a session."""
    return hashlib.sha256(session.encode()).hexdigest()


class Reads:
    """The store's queries (mixed into JobStore): over ``self.q``, the read-only client."""

    q: ReadOnly

    def now(self) -> float:
        """The Redis server's clock, which every transition and heartbeat uses."""
        seconds, micros = self.q.time()
        return seconds + micros / 1e6

    # reading
    def get(self, job_id: str) -> JobInfo | None:
        """The job's record; None where there is none. A key that is not a job's record (a
        job's own ``:index`` or ``:specs``, named by a crafted id) is no job either."""
        try:
            meta = self.q.hgetall(JobKeys(job_id).record)
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                return None
            raise
        return JobInfo(job_id, meta) if meta and "location" in meta else None

    def jobs(self, limit: int = 50, offset: int = 0, team: str | None = None) -> list[JobInfo]:
        """Newest first, one page: of every job, or of one web team's."""
        index = keys.JOBS if team is None else keys.team_jobs(team)
        ids = self.q.zrevrange(index, offset, offset + limit - 1)
        return [info for job_id in ids if (info := self.get(job_id))]

    def jobs_after(
        self,
        limit: int,
        after: str = "",
        team: str | None = None,
        budget: int = 2000,
        keep: Any = None,
    ) -> tuple[list[JobInfo], str | None]:
        """Newest first, one page after the cursor ``after`` (``<created>:<job id>`` of the
        last job looked at before; '' for the first page): the page, and the cursor of the
        next one (None at the end). A cursor stays good while jobs are added or expire: it
        names a place in time, not an offset. Ids whose job expired, and jobs ``keep`` (a
        test of a JobInfo) says no to, are passed over, at most ``budget`` of them per page
        (the page is then short: follow the cursor)."""
        index = keys.JOBS if team is None else keys.team_jobs(team)
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
            chunk = self.q.zrevrangebyscore(index, top, "-inf", start, 200, withscores=True)
            if not chunk:
                return found, None
            start += len(chunk)
            for job_id, score in chunk:
                if last and repr(score) == top and job_id >= last:
                    continue  # the cursor's job, or one before it at the same instant
                looked += 1
                cursor = f"{score!r}:{job_id}"
                info = self.get(job_id)
                if info is not None and (keep is None or keep(info)):
                    found.append(info)
                if len(found) == limit or looked >= budget:
                    break
        if cursor is None:
            return found, None
        score, _, job_id = cursor.partition(":")
        older = self.q.zcount(index, "-inf", f"({score}")
        same = [j for j in self.q.zrangebyscore(index, score, score) if j < job_id]
        return found, cursor if older or same else None

    def count_jobs(self, team: str | None = None) -> int:
        """How many jobs ``jobs`` pages through (of every job, or of one web team's)."""
        return int(self.q.zcard(keys.JOBS if team is None else keys.team_jobs(team)))

    def ping(self) -> bool:
        return bool(self.q.ping())

    def slot_jobs(self, name: str, labels: list[str]) -> dict[str, str]:
        """label -> the job that holds that slot of a scheduled manifest (those claimed)."""
        if not labels:
            return {}
        held = self.q.mget([keys.slot(name, label) for label in labels])
        return {label: job for label, job in zip(labels, held, strict=True) if job}

    def render(self, job_id: str, render_id: str) -> tuple[Render, dict[str, Any]] | None:
        """One render's spec and state, or None if the job has no such render."""
        pipe = self.q.pipeline()
        pipe.hget(JobKeys(job_id).specs, render_id)
        pipe.hget(JobKeys(job_id).states, render_id)
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
        decision: str | None = None,
        backwards: bool = False,
        contains: bool = False,
    ) -> RenderPage:
        """One page of a job's renders, in render-id order, after the cursor ``after`` (a
        render id), matching every filter given. What it reads is bounded by ``limit`` and
        ``budget`` (candidates looked at), never by the job's size: it walks the narrowest
        index that applies (the ended renders of one state; the running ones, fleet-wide a few
        per worker; else the renders of one style, size or content), a few hundred at a time,
        and checks the other filters on those. ``next`` is the cursor for the page after this
        one (None at the end); a page may hold fewer than ``limit`` when the budget ran out
        first: follow ``next``.

        ``decision``: a review decision, or ``undecided`` (each render's decision is under
        ``review`` in its state); ``contains``: the content filter matches part of the name
        (case-insensitive; then it walks every render, checking names); ``backwards``: the
        renders before ``after``, nearest first (a page's previous render)."""
        wanted = {"status": status, "style": style, "size": size, "content": content}
        lex = self._lex_back if backwards else self._lex
        exact_content = None if contains else content
        if status in TERMINAL:
            source = lex(JobKeys(job_id).ended, f"{status}\0", after)
        elif status == "running":
            mine = self._running_of(job_id, after, backwards)
            source = iter(sorted(mine, reverse=backwards))
        else:
            facet, value = next(
                (
                    (f, v)
                    for f, v in (("s", style), ("z", size), ("c", exact_content))
                    if v is not None
                ),
                ("a", None),
            )
            prefix = f"{facet}\0" if value is None else f"{facet}\0{value}\0"
            source = lex(JobKeys(job_id).index, prefix, after)
        found: list[tuple[Render, dict[str, Any]]] = []
        scanned, last, more = 0, after, True
        while more and len(found) < limit and scanned < budget:
            want = min(200, budget - scanned)
            batch = list(islice(source, want))
            more = len(batch) == want  # a short batch: the index ran out (else maybe more)
            scanned += len(batch)
            pipe = self.q.pipeline()
            pipe.hmget(JobKeys(job_id).specs, batch or ["-"])
            pipe.hmget(JobKeys(job_id).states, batch or ["-"])
            pipe.hmget(JobKeys(job_id).reviews, batch or ["-"])
            specs, states, reviews = pipe.execute()
            rows = zip(batch, specs, states, reviews, strict=False)
            for i, (rid, spec, state, review) in enumerate(rows):
                last = rid
                if not spec:
                    continue
                render = Render.from_dict(json.loads(spec))
                record = json.loads(state) if state else {"status": "pending"}
                record["review"] = json.loads(review) if review else None
                if _matches(render, record, wanted, decision, contains):
                    found.append((render, record))
                    if len(found) >= limit:
                        more = more or i < len(batch) - 1
                        break
        return RenderPage(found, last if more else None, scanned)

    def _lex(self, key: str, prefix: str, after: str) -> Iterator[str]:
        """Render ids of the index entries under ``prefix``, after ``after``, a page at a
        time (ZRANGEBYLEX: O(log N) per page)."""
        low = f"({prefix}{after}" if after else f"[{prefix}"
        while True:
            page = self.q.zrangebylex(key, low, f"[{prefix}\x7f", start=0, num=200)
            for member in page:
                yield member[len(prefix) :]
            if len(page) < 200:
                return
            low = f"({page[-1]}"

    def _lex_back(self, key: str, prefix: str, before: str) -> Iterator[str]:
        """As ``_lex``, backwards: the entries before ``before`` (all where it is ''),
        nearest first (ZREVRANGEBYLEX)."""
        high = f"({prefix}{before}" if before else f"[{prefix}\x7f"
        while True:
            page = self.q.zrevrangebylex(key, high, f"[{prefix}", start=0, num=200)
            for member in page:
                yield member[len(prefix) :]
            if len(page) < 200:
                return
            high = f"({page[-1]}"

    def _running_of(self, job_id: str, after: str, backwards: bool = False) -> list[str]:
        """This job's running renders, from the fleet's running hash (a few per worker)."""
        found = [
            fld.split(" ", 1)[1]
            for fld, _ in self.q.hscan_iter(keys.RUNNING, match=f"{job_id} *", count=1000)
        ]
        if not after:
            return found
        return [r for r in found if (r < after if backwards else r > after)]

    def active(self) -> list[str]:
        return sorted(self.q.smembers(keys.ACTIVE))

    def specs(self, job_id: str, render_ids: list[str] | None = None) -> list[Render]:
        """Of ``render_ids`` (HMGET, a thousand at a time), or all (HSCAN, in pages): no single
        command grows with the job, so a 100,000-render job never blocks Redis."""
        if render_ids is None:
            raw = [v for _, v in self.q.hscan_iter(JobKeys(job_id).specs, count=500)]
        else:
            raw = [
                x
                for i in range(0, len(render_ids), 1000)
                for x in self.q.hmget(JobKeys(job_id).specs, render_ids[i : i + 1000])
                if x
            ]
        return [Render.from_dict(json.loads(x)) for x in raw]

    def states(self, job_id: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.q.hscan_iter(JobKeys(job_id).states, count=1000)}

    def failed(self, job_id: str, limit: int = 50) -> list[str]:
        """Up to ``limit`` failed render ids, sorted, read from the job's failed set in small
        pages: what ``status`` shows costs the same for any size of job."""
        found: list[str] = []
        for render_id in self.q.sscan_iter(JobKeys(job_id).failed, count=100):
            found.append(render_id)
            if len(found) >= limit:
                break
        return sorted(found)

    def state(self, job_id: str, render_id: str) -> dict[str, Any] | None:
        raw = self.q.hget(JobKeys(job_id).states, render_id)
        return json.loads(raw) if raw else None

    def with_status(self, job_id: str, status: str, among: list[str] | None = None) -> list[str]:
        """Render ids in one state: of ``among`` (HMGET, a thousand at a time), or of the whole
        job (HSCAN, in pages), so a big job never blocks Redis."""
        if among is None:
            pairs = self.q.hscan_iter(JobKeys(job_id).states, count=1000)
        else:
            pairs = (
                pair
                for i in range(0, len(among), 1000)
                for pair in zip(
                    among[i : i + 1000],
                    self.q.hmget(JobKeys(job_id).states, among[i : i + 1000]),
                    strict=True,
                )
            )
        return [rid for rid, raw in pairs if raw and json.loads(raw)["status"] == status]

    def holds(self, held: Held, owner: str) -> bool:
        """Whether this attempt still holds its render (checked before an output is written)."""
        return self.q.hget(keys.RUNNING, held.field) == f"{owner} {held.attempt}"

    def crashes(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.q.hgetall(JobKeys(job_id).crashes).items()}

    def device_errors(self, job_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in self.q.hgetall(JobKeys(job_id).devices).items()}

    def beat_marker(self, name: str) -> float | None:
        """The last slot beat fired for a scheduled manifest (UTC timestamp), or None."""
        value = self.q.get(keys.beat_marker(name))
        return float(value) if value is not None else None

    def out_of_memory(self) -> str | None:
        """Why Redis refuses writes now, if it does: at its maxmemory under noeviction, every
        transition (a render's end, a heartbeat) fails until memory is freed. None else."""
        info = self.q.info("memory")
        used, cap = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
        if cap and used >= cap:
            return (
                f"Redis is out of memory ({used / 2**20:.0f} of {cap / 2**20:.0f} MiB): it "
                "refuses writes, so renders cannot record their ends; free memory or raise "
                "maxmemory (docs/operations.md, Redis out of memory)"
            )
        return None

    def lease_left(self, name: str) -> float:
        """Seconds until the lease ``name`` lapses unless renewed (0 when none is held)."""
        return max(0.0, int(self.q.pttl(keys.lock(name))) / 1000)

    def session_team(self, session: str) -> str | None:
        """The team of a live session, or None (unknown, expired or ended)."""
        if not session or len(session) > 100:
            return None
        return self.q.get(keys.session(session_digest(session)))

    def workers(self) -> dict[str, dict[str, Any]]:
        """Every known worker process: its description, health and seconds since its beat."""
        now = self.now()
        beats = dict(self.q.zrange(keys.HEARTBEATS, 0, -1, withscores=True))
        out = {}
        for owner, raw in self.q.hgetall(keys.WORKERS).items():
            out[owner] = {**json.loads(raw), "age": now - beats.get(owner, 0.0)}
        return out

    def beating(self) -> set[str]:
        return set(self.q.zrange(keys.HEARTBEATS, 0, -1))

    def silent_owners(self, liveness: float) -> list[str]:
        """Owners whose last heartbeat is older than ``liveness`` seconds."""
        return list(self.q.zrangebyscore(keys.HEARTBEATS, "-inf", self.now() - liveness))

    def running_renders(self) -> list[tuple[str, str, str]]:
        """(job, render, owner) for every running render, fleet-wide."""
        out = []
        for fld, value in self.q.hscan_iter(keys.RUNNING, count=1000):
            job_id, render_id = fld.split(" ", 1)
            out.append((job_id, render_id, value.rsplit(" ", 1)[0]))
        return out

    def fleet_counters(self) -> dict[str, str]:
        return self.q.hgetall(keys.METRICS)

    # retention
    def memory(self, job_id: str) -> int:
        """Bytes the job's state takes in Redis."""
        return sum(self.q.memory_usage(key) or 0 for key in JobKeys(job_id).all())

    # reports
    def summary(self, job_id: str) -> Summary:
        info = self.get(job_id)
        if info is None:
            raise KeyError(job_id)
        states = self.states(job_id)
        reviews = {
            k: json.loads(v) for k, v in self.q.hscan_iter(JobKeys(job_id).reviews, count=1000)
        }
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
            record.review = reviews.get(render.id)
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
