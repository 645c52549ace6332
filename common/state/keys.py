"""The one key schema of the fleet's state. Every key name is made here, and reaches a Lua
script through KEYS: no script builds a key name. A job's keys share one hash tag,
``{<job id>}``, so they sit in one Redis Cluster slot; a script that also touches fleet-wide
keys (the running roll, the metrics) still needs one Redis or a cluster with those keys in
the same slot, which is why the fleet runs on one primary (docs/architecture.md).

Schema 2 (this one) put a job's keys under its hash tag and made the reap markers one hash
per job; ``common/state/upgrade.py`` renames schema 1's keys once, at a service's start.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "sb"
SCHEMA = 2
SCHEMA_KEY = f"{PREFIX}:schema"

ACTIVE = f"{PREFIX}:active"  # jobs not yet ended: what the reconciler looks at
JOBS = f"{PREFIX}:jobs"  # every job by creation time: `stylebatch jobs`
RUNNING = f"{PREFIX}:running"  # "job render" -> "owner attempt", every running render
HEARTBEATS = f"{PREFIX}:heartbeats"  # owner -> last beat (Redis time)
WORKERS = f"{PREFIX}:workers"  # owner -> its description and health (JSON)
METRICS = f"{PREFIX}:metrics"  # fleet-wide counters (scheduler/metrics.py)
WEBHOOKS = f"{PREFIX}:webhooks"  # jobs whose end's delivery is owed (end_job.lua)


@dataclass(frozen=True)
class JobKeys:
    """One job's keys, all under its hash tag."""

    job_id: str

    def _key(self, suffix: str = "") -> str:
        return f"{PREFIX}:job:{{{self.job_id}}}{suffix}"

    @property
    def record(self) -> str:
        return self._key()

    @property
    def specs(self) -> str:
        return self._key(":specs")

    @property
    def states(self) -> str:
        return self._key(":states")

    @property
    def crashes(self) -> str:
        return self._key(":crashes")

    @property
    def devices(self) -> str:
        return self._key(":device_errors")

    @property
    def failed(self) -> str:
        """The ids of its failed renders."""
        return self._key(":failed")

    @property
    def pauses(self) -> str:
        return self._key(":pauses")

    @property
    def index(self) -> str:
        """Its renders by style, size and content (made at create; ``renders_page``)."""
        return self._key(":index")

    @property
    def ended(self) -> str:
        """Its ended renders by state."""
        return self._key(":ended")

    @property
    def reaped(self) -> str:
        """``render attempt`` -> the owner it was reaped from (beat.lua takes a pause back)."""
        return self._key(":reaped")

    @property
    def reviews(self) -> str:
        """render -> its review decision (JSON with its version; review.lua)."""
        return self._key(":reviews")

    @property
    def versions(self) -> str:
        """render -> its re-renders ("job render" each, JSON list; add_versions.lua)."""
        return self._key(":versions")

    @property
    def lineage(self) -> str:
        """A re-render job's render -> the "job render" it re-renders."""
        return self._key(":lineage")

    def staging(self, attempt: str) -> tuple[str, str, str]:
        """A create attempt's own staged specs, states and index (expire if it dies)."""
        return (
            f"{self.specs}:staging:{attempt}",
            f"{self.states}:staging:{attempt}",
            f"{self.index}:staging:{attempt}",
        )

    def built(self, what: str) -> str:
        """A key built apart and then swapped in (index_recorded.lua)."""
        return self._key(f":{what}:building")

    def all(self) -> list[str]:
        """Every key the job owns once it exists, its record first."""
        return [
            self.record,
            self.specs,
            self.states,
            self.crashes,
            self.devices,
            self.failed,
            self.pauses,
            self.index,
            self.ended,
            self.reaped,
            self.reviews,
            self.versions,
            self.lineage,
        ]

    def ending(self) -> list[str]:
        """What a script that may end a render touches, in this order (the Lua prelude's
        ``J``): record, states, failed, ended, and the fleet's metrics."""
        return [self.record, self.states, self.failed, self.ended, METRICS]


def team_jobs(team: str) -> str:
    """A web team's jobs by creation time."""
    return f"{PREFIX}:team:{team}:jobs"


def slot(name: str, label: str) -> str:
    """The job that holds one slot of a scheduled manifest."""
    return f"{PREFIX}:slot:{name}:{label}"


def beat_marker(name: str) -> str:
    """The last slot beat fired for a scheduled manifest."""
    return f"{PREFIX}:beat:last:{name}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


def session(digest: str) -> str:
    return f"{PREFIX}:session:{digest}"


def rate(team: str, kind: str) -> str:
    return f"{PREFIX}:rate:{team}:{kind}"


def idempotency(digest: str) -> str:
    return f"{PREFIX}:idem:{digest}"
