"""The fleet's own state beside the jobs: leases, schedule slots and beat markers, workers'
heartbeats, failure counters, and the web front's sessions, rates and idempotency keys.
Mixed into JobStore."""

from __future__ import annotations

import json
import secrets
from typing import Any

from common.state import keys
from common.state.keys import JobKeys
from common.state.model import Beat, Held, Rate
from common.state.reads import session_digest
from common.state.scripts import Scripts


class FleetWrites:
    """Leases, slots, liveness, counters and the web front's keys."""

    r: Any
    scripts: Scripts

    def count_failure(self, what: str) -> None:
        """A fleet-wide failure counter: ``finalize`` or ``webhook``."""
        self.r.hincrby(keys.METRICS, f"failures:{what}", 1)

    # schedules
    def claim_slot(self, name: str, label: str, job_id: str) -> str | None:
        """Claim a schedule slot for a job: None if claimed now, else the job that holds it."""
        key = keys.slot(name, label)
        if self.r.set(key, job_id, nx=True, ex=400 * 24 * 3600):
            return None
        return self.r.get(key)

    def set_beat_marker(self, name: str, timestamp: float, if_absent: bool = False) -> bool:
        return bool(self.r.set(keys.beat_marker(name), timestamp, nx=if_absent))

    # locks
    def lease(self, name: str, token: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``token``; False while another holds it."""
        ms = max(1, int(seconds * 1000))
        return bool(self.scripts.run("lock", [keys.lock(name)], [token, ms]))

    def let_go(self, name: str, token: str) -> None:
        self.scripts.run("unlock", [keys.lock(name)], [token])

    @staticmethod
    def token() -> str:
        return secrets.token_hex(8)

    # the web front: sessions, rates, idempotency keys (scheduler/web)
    def open_session(self, team: str, seconds: int) -> str:
        """A new session of ``team`` for ``seconds``: its id (random, the cookie's value).
        Only its digest is a key, so reading Redis gives no one a session. A plain SET: one
        new key, nothing else to keep in step."""
        session = secrets.token_urlsafe(32)
        self.r.set(keys.session(session_digest(session)), team, ex=seconds, nx=True)
        return session

    def end_session(self, session: str) -> None:
        """Log out: the session is gone everywhere at once (a plain DEL of its one key)."""
        if session and len(session) <= 100:
            self.r.delete(keys.session(session_digest(session)))

    def take_rate(self, team: str, kind: str, interval_ms: int, burst: int) -> Rate:
        """One request of ``team`` against its ``kind`` of rate (rate.lua)."""
        allowed, left, full_ms, wait_ms = self.scripts.run(
            "rate", [keys.rate(team, kind)], [max(1, interval_ms), max(1, burst)]
        )
        return Rate(bool(allowed), int(left), burst, int(full_ms) / 1000, int(wait_ms) / 1000)

    def idempotency(self, team: str, key: str, step: str, digest: str, *args: Any) -> list[str]:
        """A POST's Idempotency-Key (idempotency.lua): ``begin``, ``end`` or ``drop``."""
        name = session_digest(f"{team}\0{key}")
        return list(
            self.scripts.run("idempotency", [keys.idempotency(name)], [step, digest, *args])
        )

    # worker liveness
    def beat(self, owner: str, description: dict[str, Any], held: list[Held] = ()) -> Beat:
        """Record that ``owner`` (a worker process) is alive, and learn which of the renders
        it holds have been taken from it."""
        ks = [keys.HEARTBEATS, keys.WORKERS, keys.RUNNING]
        args: list[Any] = [owner, json.dumps(description)]
        for h in held:
            job = JobKeys(h.job_id)
            ks += [job.crashes, job.pauses, job.reaped]
            args += [h.job_id, h.render_id, h.attempt]
        t, stale = self.scripts.run("beat", ks, args)
        return Beat(float(t), set(stale))

    def forget(self, owner: str, silent_before: float | None = None) -> bool:
        """Drop a worker from the roll (only if still silent since ``silent_before``)."""
        args = [owner, "" if silent_before is None else silent_before]
        return bool(self.scripts.run("forget", [keys.HEARTBEATS, keys.WORKERS], args))
