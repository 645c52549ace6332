"""Changing jobs and renders: every change with a rule is one Lua script (common/lua/), run
through ``self.scripts``; the few plain writes are listed in ``PLAIN_WRITES`` with their
reason (common/state/__init__.py). Mixed into JobStore."""

from __future__ import annotations

import contextlib
import json
import secrets
from typing import Any

import redis

from common.expand import JobPlan, Render
from common.schedule import slot_label
from common.state import keys
from common.state.keys import JobKeys
from common.state.model import (
    FINISH,
    STAGING_TTL,
    SUBMIT_LEASE,
    TERMINAL,
    Claim,
    Facets,
    Held,
    Incomplete,
    Specs,
    index_entries,
    running_field,
)
from common.state.scripts import NotDurable, Scripts

STAGING_CHUNK = 100  # renders per staging command: each command stays well under 10 ms
INDEX_CHUNK = 400  # render index entries per staging ZADD (each render has four or more)
CHUNKS_PER_TRIP = 20  # staging commands sent per round trip
# a webhook event -> where its delivery's fields live on the job record (claim_delivery.lua)
FIELDS = {"ended": "webhook", "reviewed": "review_webhook"}


class Running(redis.RedisError):
    """``--force`` of a job that is running or finalizing: refused; cancel it first."""


class JobWrites:
    """Creating jobs and moving their renders and their ends along."""

    r: Any
    scripts: Scripts
    job_ttl: int
    jobs_horizon: float

    # creation
    def create(self, plan: JobPlan, force: bool = False, team: str = "") -> bool:
        """Record a new job, whole; False if it already exists. ``force``: an ended job of the
        same id is replaced; a running one is refused (Running: cancel it first), so attempt
        numbers never restart under a live worker and every count stays exact.

        Specs, states and the render index are staged in small chunks first (no command of
        them grows with the job: 100,000 renders never block Redis), where nothing looks,
        under keys of this attempt's own that expire in STAGING_TTL; then one script makes
        the job visible with all of them (create.lua). A submit killed part way leaves no
        job, and its staging goes within minutes. ``team``: the web team that submitted it
        (scheduler/web), listed under ``jobs(team=...)``."""
        job_id = plan.job_id
        job = JobKeys(job_id)
        if force:
            status = self.r.hget(job.record, "status")
            if status in ("running", "finalizing"):
                raise Running(f"job {job_id} is {status}: cancel it first, then submit --force")
            self.delete(job_id)
        elif self.r.exists(job.record):
            return False
        staged = job.staging(secrets.token_hex(6))  # a racing submit's staging is apart
        try:
            pipe = self.r.pipeline(transaction=False)
            # The index in its own order: each ZADD then inserts at the sorted set's end,
            # several times faster in Redis than entries in render order.
            index = sorted(m for r in plan.renders for m in index_entries(r))
            for n, (key, mapping) in enumerate(_staging(plan.renders, index, staged)):
                if key == staged[2]:
                    pipe.zadd(key, mapping)
                else:
                    pipe.hset(key, mapping=mapping)
                if n == 0 or len(pipe) >= CHUNKS_PER_TRIP:  # expiring from the first write
                    for each in staged:
                        pipe.expire(each, STAGING_TTL)
                    pipe.execute()
            for key in staged:
                pipe.expire(key, STAGING_TTL)
            pipe.execute()
        except redis.RedisError:
            self._drop_staging(staged)  # out of memory, say: what was staged goes at once
            raise
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
            "slot": slot_label(plan.slot) if plan.slot else "",
            "facets": json.dumps(Facets(plan.renders).record()),
            "outputs": sum(len(r.keys) for r in plan.renders),
        }
        ks = [
            job.record,
            *staged[:2],
            job.specs,
            job.states,
            keys.JOBS,
            keys.ACTIVE,
            staged[2],
            job.index,
            keys.team_jobs(team or "-"),
        ]
        entries = len(index)
        args = [job_id, json.dumps(record), len(plan.renders), entries, team, self.jobs_horizon]
        try:
            outcome, held = self.scripts.run_durably("create", ks, args)
        except redis.RedisError:
            self._drop_staging(staged)
            raise
        if outcome != "created":  # another submit made it first: this attempt's staging goes
            self._drop_staging(staged)
        if outcome == "incomplete":  # this attempt's staging expired under it
            raise Incomplete(f"job {job_id}: staged renders incomplete; submit again")
        if not held:  # a failover now could lose it: the caller must not report it made
            raise NotDurable(f"job {job_id}: not yet on a replica; submit again")
        return outcome == "created"

    def _drop_staging(self, staged: tuple[str, ...]) -> None:
        """A create's staging, gone (a plain DEL: nothing else refers to it). Under OOM a
        DEL still runs (Redis refuses only commands that may grow memory)."""
        with contextlib.suppress(redis.RedisError):  # away: it expires within STAGING_TTL
            self.r.delete(*staged)

    def hold_submit(self, job_id: str, token: str, seconds: float = SUBMIT_LEASE) -> bool:
        """Take (or renew) the lease of submitting ``job_id``: held from before create until
        its tasks are all sent, so a submit racing it neither stages over it nor re-drives
        what it is still sending. A submit killed holding it leaves it to expire; the next
        submit after that recovers the job (scheduler/submit.py)."""
        return self.lease(f"submit:{job_id}", token, seconds)

    def release_submit(self, job_id: str, token: str) -> None:
        self.let_go(f"submit:{job_id}", token)

    def confirm_durable(self, job_id: str) -> None:
        """Raise NotDurable unless a replica holds the job as recorded: one write of this
        connection after it (its activity), waited for; a replica that acknowledges it holds
        every earlier write too (replication keeps their order). For a job found existing
        whose create may not have been held (its submit died, or was told NotDurable): its
        tasks are not sent until it is, so a failover cannot lose a job that is rendering."""
        _, held = self.scripts.run_durably("touch", [JobKeys(job_id).record], [])
        if not held:
            raise NotDurable(f"job {job_id}: not yet on a replica; submit again")

    def mark_sent(self, job_id: str) -> None:
        self.scripts.run("touch", [JobKeys(job_id).record], ["sent", "1"])

    def touch(self, job_id: str) -> None:
        self.scripts.run("touch", [JobKeys(job_id).record], [])

    def touch_fields(self, job_id: str, **fields: str) -> None:
        """Facts about a job that are no transition (what its finalize has done, and is
        doing): set on its record, with its activity, if it still exists (touch.lua)."""
        args = [x for name, value in fields.items() for x in (name, value)]
        self.scripts.run("touch", [JobKeys(job_id).record], args)

    def touch_finalizing(self, job_id: str) -> None:
        self.scripts.run("touch", [JobKeys(job_id).record], ["finalizing_since", "@now"])

    def delete(self, job_id: str) -> None:
        """A job gone, whole: off the indexes first, then its keys (freed in the background,
        never a slow command). No transaction: Redis out of memory refuses every command
        queued in one, and this is the operator's way out of that (`stylebatch gc`); cut
        short between the two, what is left is keys that expire with the job, or an id the
        listings pass over."""
        team = self.r.hget(JobKeys(job_id).record, "team")
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(keys.JOBS, job_id)
        if team:
            pipe.zrem(keys.team_jobs(team), job_id)
        pipe.srem(keys.ACTIVE, job_id)
        pipe.unlink(*JobKeys(job_id).all())
        pipe.execute()

    def cancel(self, job_id: str) -> str:
        """Ask for a running job's cancel: ``requested``; a job whose renders have all ended
        (``finalizing``) or that has ``ended`` is left as it is; ``missing``."""
        return self.scripts.run("cancel", [JobKeys(job_id).record], [])

    def drop_active(self, job_id: str) -> bool:
        """Off the reconciler's list, if the job ended or is gone."""
        ks = [JobKeys(job_id).record, keys.ACTIVE]
        return bool(self.scripts.run("drop_active", ks, [job_id]))

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
        job = JobKeys(job_id)
        ks = [*job.ending(), job.crashes, keys.RUNNING, keys.HEARTBEATS, job.reaped]
        fld = running_field(job_id, render_id)
        args = [render_id, owner, liveness, max_crashes, dead_owner, fld, task]
        outcome, detail, attempt = self.scripts.run("claim", ks, args)
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
        ks = [*JobKeys(held.job_id).ending(), keys.RUNNING]
        args = [held.render_id, status, record, held.field, held.attempt, held.owner]
        return FINISH[int(self.scripts.run("finish", ks, args))]

    def release(
        self, held: Held, owner: str, device_error: bool = False, max_device_errors: int = 0,
        reason: str = "",
    ) -> str:  # fmt: skip
        """Back to pending, if this attempt holds it (a transient, configuration or device
        error is no crash): ``released``; with ``device_error``, one counted against the
        render, and at ``max_device_errors`` ``failed`` (or ``complete``: it ended the job)
        instead; else ``superseded``, ``ended`` or ``missing``."""
        job = JobKeys(held.job_id)
        ks = [*job.ending(), keys.RUNNING, job.devices]
        args = [held.render_id, owner, held.field, held.attempt]
        args += ["1" if device_error else "", max_device_errors, reason]
        outcome, detail = self.scripts.run("release", ks, args)
        return "complete" if outcome == "failed" and detail == "2" else outcome

    def reap(self, job_id: str, render_id: str, silent_owner: str, max_crashes: int) -> Claim:
        """A render whose owner went silent: one crash, then pending again (or failed at the
        cap). Taken back if the owner's heartbeat resumes."""
        job = JobKeys(job_id)
        ks = [*job.ending(), job.crashes, keys.RUNNING, job.reaped]
        args = [render_id, silent_owner, max_crashes, running_field(job_id, render_id)]
        outcome, detail = self.scripts.run("reap", ks, args)
        if outcome == "gave_up":
            return Claim("gave_up", crashes=max_crashes, complete=detail == "2")
        return Claim(outcome, crashes=int(detail))

    def fail_task(self, job_id: str, task: str, render_ids: list[str], reason: str) -> bool:
        """Fail the renders that task ``task`` claimed and still holds (its errback); True if
        that ended the job's last render."""
        ks = [*JobKeys(job_id).ending(), keys.RUNNING]
        _, complete = self.scripts.run("fail_task", ks, [task, reason, job_id, *render_ids])
        return bool(complete)

    def reset_failed(self, job_id: str) -> list[str]:
        """`stylebatch retry`: every failed render pending again, the job running again."""
        job = JobKeys(job_id)
        ks = [*job.ending(), job.crashes, keys.ACTIVE, job.specs, job.devices, job.index]
        ks += [job.reviews, job.versions, job.lineage]
        return list(self.scripts.run("reset_failed", ks, [job_id]))

    # job transitions
    def begin_finalize(self, job_id: str, token: str, lease: float) -> str:
        """Lease the job's end for one finalize: ``ok``, ``busy`` (another holds it), or the
        job's status if it is not finalizing. Durable: the lease, and with it every render's
        end before it, is held by the replicas before the summary is written (NotDurable
        otherwise: write nothing yet, try again)."""
        outcome, held = self.scripts.run_durably(
            "begin_finalize", [JobKeys(job_id).record], [token, lease]
        )
        if outcome == "ok" and not held:
            raise NotDurable(f"job {job_id}: its renders' ends are not yet on a replica")
        return outcome

    def end_job(self, job_id: str, status: str = "done", reason: str = "", token: str = "") -> str:
        """finalizing -> done (cancelled if a cancel was asked for) or failed with a reason, by
        the finalize holding the lease (``token``; '' for anyone). Returns the end's time
        (the webhook's delivery id derives from it) to exactly one caller, else ''. The
        webhook it owes is sent only once a replica holds its claim (claim_delivery)."""
        assert status in ("done", "failed"), status
        job = JobKeys(job_id)
        ks = [job.record, keys.ACTIVE, keys.WEBHOOKS, *job.all()[1:]]
        outcome, finished = self.scripts.run(
            "end_job", ks, [job_id, status, reason, self.job_ttl, token]
        )
        return finished if outcome == "ok" else ""

    # webhook deliveries: a job's end (job.ended) and its review complete (job.reviewed)
    def claim_delivery(
        self, job_id: str, delivery: str, token: str, lease: float, event: str = "ended"
    ) -> tuple[str, int]:
        """(``claimed`` | ``delivered`` | ``busy`` | ``stale`` | ``unreplicated``, attempts
        so far). Durable: a delivery is POSTed only once a replica holds its claim, and so the
        job's end before it; ``unreplicated`` means not yet: try again shortly."""
        (outcome, attempts), held = self.scripts.run_durably(
            "claim_delivery", [JobKeys(job_id).record], [delivery, token, lease, FIELDS[event]]
        )
        if outcome == "claimed" and not held:
            return "unreplicated", int(attempts)
        return outcome, int(attempts)

    def delivery_outcome(
        self,
        job_id: str,
        delivery: str,
        token: str,
        status: str,
        outcome: str,
        hold: float = 0,
        event: str = "ended",
    ) -> bool:
        ks = [JobKeys(job_id).record, keys.METRICS, keys.WEBHOOKS]
        member = job_id if event == "ended" else f"{job_id} {event}"
        args = [delivery, token, status, outcome, hold, member, FIELDS[event]]
        return bool(self.scripts.run("delivery_outcome", ks, args))

    def owed_webhooks(self, older_than: float) -> list[tuple[str, str, str]]:
        """(job, delivery id, event) for each delivery owed ``older_than`` seconds or more,
        neither delivered nor given up, that no notify task holds now (its message was lost,
        or its claim ran out)."""
        now = self.now()
        out = []
        for member in sorted(self.r.smembers(keys.WEBHOOKS)):
            job_id, _, event = member.partition(" ")
            event = event or "ended"
            prefix = FIELDS.get(event, "webhook")
            delivery, until, since = self.r.hmget(
                JobKeys(job_id).record,
                f"{prefix}_delivery",
                f"{prefix}_until",
                "finished" if event == "ended" else "reviewed",
            )
            if delivery is None:  # the job is gone
                self.r.srem(keys.WEBHOOKS, member)
            elif float(until or 0) < now and float(since or now) <= now - older_than:
                out.append((job_id, delivery, event))
        return out

    def index_recorded(self, job_id: str) -> bool:
        """Index a job recorded before the render index existed (its record has no
        ``facets``), as create does now: its renders by style, size and content, its ended
        renders by state, and its facets. Reads its specs and states once, O(renders), once
        per job (the web front calls it on such a job's first read: scheduler/web/deps.py),
        building under keys of its own that one script swaps in (index_recorded.lua); two
        callers at once build the same thing. False where there was nothing to do."""
        job = JobKeys(job_id).record
        if not self.r.exists(job) or self.r.hexists(job, "facets"):
            return False
        token = secrets.token_hex(4)
        built = [JobKeys(job_id).built(f"index:{token}"), JobKeys(job_id).built(f"ended:{token}")]
        gathered = Facets()

        def add(key: str, members: list[str]) -> None:
            pipe = self.r.pipeline(transaction=False)
            pipe.zadd(key, dict.fromkeys(members, 0))
            pipe.expire(key, STAGING_TTL)  # a caller killed part way leaves nothing for long
            pipe.execute()

        members: list[str] = []
        for _, raw in self.r.hscan_iter(JobKeys(job_id).specs, count=1000):
            render = Render.from_dict(json.loads(raw))
            gathered.add(render)
            members.extend(index_entries(render))
            if len(members) >= 4000:
                add(built[0], members)
                members = []
        if members:
            add(built[0], members)
        ended = []
        for rid, raw in self.r.hscan_iter(JobKeys(job_id).states, count=1000):
            status = json.loads(raw).get("status")
            if status in TERMINAL:
                ended.append(f"{status}\0{rid}")
            if len(ended) >= 4000:
                add(built[1], ended)
                ended = []
        if ended:
            add(built[1], ended)
        ks = [job, built[0], JobKeys(job_id).index, built[1], JobKeys(job_id).ended]
        return bool(self.scripts.run("index_recorded", ks, [json.dumps(gathered.record())]))

    def gc(self, older_than: float | None = None) -> dict[str, int]:
        """Delete now every ended job that finished more than ``older_than`` seconds ago
        (default: the retention, ``job_ttl``), and drop ids of jobs already expired from the
        index. Running jobs are never touched, nor an ended job whose webhook delivery is
        still owed (not yet delivered or given up): deleted, its delivery would be stale and
        that end never delivered; it goes in a later gc (``owed``: how many were kept).
        Returns what was freed."""
        older_than = self.job_ttl if older_than is None else older_than
        cutoff = self.now() - older_than
        freed = {"jobs": 0, "bytes": 0, "expired_ids": 0, "owed": 0}
        for job_id in self.r.zrange(keys.JOBS, 0, -1):
            info = self.get(job_id)
            if info is None:
                self.r.zrem(keys.JOBS, job_id)
                freed["expired_ids"] += 1
            elif info.terminal and float(info.meta.get("finished") or 0) <= cutoff:
                if any(self.r.smismember(keys.WEBHOOKS, [job_id, f"{job_id} reviewed"])):
                    freed["owed"] += 1
                    continue
                freed["bytes"] += self.memory(job_id)
                self.delete(job_id)
                freed["jobs"] += 1
        for index in self.r.scan_iter(match=keys.team_jobs("*"), count=1000):  # web teams' lists
            for job_id in self.r.zrange(index, 0, -1):
                if not self.r.exists(JobKeys(job_id).record):
                    self.r.zrem(index, job_id)
                    freed["expired_ids"] += 1
        return freed


def _staging(renders: list[Render], index: list[str], staged: tuple[str, ...]) -> Any:
    """A create's staging, in chunks: (key, mapping) to HSET, or to ZADD for the index."""
    specs = Specs()
    for i in range(0, len(renders), STAGING_CHUNK):
        chunk = renders[i : i + STAGING_CHUNK]
        yield staged[0], {r.id: specs.json(r) for r in chunk}
        yield staged[1], dict.fromkeys((r.id for r in chunk), '{"status":"pending"}')
    for i in range(0, len(index), INDEX_CHUNK):
        yield staged[2], dict.fromkeys(index[i : i + INDEX_CHUNK], 0)
