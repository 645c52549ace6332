"""The store: one object per process that reads and changes the fleet's state, made of the
queries (reads.py), the jobs' and renders' transitions (jobs.py) and the fleet's own keys
(fleet.py)."""

from __future__ import annotations

from typing import Any

import redis

from common.state import keys
from common.state.fleet import FleetWrites
from common.state.jobs import JobWrites
from common.state.keys import JobKeys
from common.state.model import JOBS_HORIZON_EXTRA
from common.state.reads import ReadOnly, Reads
from common.state.reviews import ReviewWrites
from common.state.scripts import Scripts


class JobStore(JobWrites, ReviewWrites, FleetWrites, Reads):
    # the fleet-wide keys (common/state/keys.py), as attributes for callers that name them
    ACTIVE, JOBS, RUNNING = keys.ACTIVE, keys.JOBS, keys.RUNNING
    HEARTBEATS, WORKERS, METRICS, WEBHOOKS = (
        keys.HEARTBEATS,
        keys.WORKERS,
        keys.METRICS,
        keys.WEBHOOKS,
    )

    def __init__(self, client: redis.Redis, job_ttl: int = 30 * 24 * 3600, replicas: int = 0):
        self.r = client
        self.q = ReadOnly(client)
        self.job_ttl = job_ttl  # seconds an ended job's state is kept (STYLEBATCH_JOB_TTL)
        self.replicas = replicas  # that must hold an effect's transition first (WAIT)
        # the jobs indexes forget an id this long after its job was made (create.lua)
        self.jobs_horizon = job_ttl + JOBS_HORIZON_EXTRA
        self.scripts = Scripts(client, replicas)

    @property
    def read(self) -> ReadOnly:
        """The state as every other module may see it: reads only."""
        return self.q

    @staticmethod
    def keys(job_id: str) -> JobKeys:
        """A job's keys (common/state/keys.py)."""
        return JobKeys(job_id)

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
