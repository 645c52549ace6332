"""The planner processes: a team's manifest is read and planned apart from the server's event
loop (scheduler/web/intake.py says why), spawned once and kept; one whose server is gone
exits by itself."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from common.settings import Settings
from common.teams import Team
from scheduler.intake import Refused, Submitter, Unchecked
from scheduler.web.problems import ApiError, Unavailable

BASE = Path("/nonexistent-web-manifest")  # a posted manifest's relative paths lead nowhere
CODES = {
    "invalid manifest": "invalid-manifest",
    "output refused": "output-refused",
    "preflight failed": "preflight-failed",
}


def problems_of(problems: list[Any]) -> list[dict[str, str]]:
    return [{"where": p.where, "message": p.message} for p in problems]


def submitter(fleet: Settings, who: Team) -> Submitter:
    return Submitter(who.settings(fleet), who.name, who.webhook_secrets)


def parse_body(body: bytes, content_type: str = "") -> dict[str, Any]:
    """A manifest posted as YAML or JSON (common/manifest.py's ``read_document``): read as
    JSON when sent as JSON or opening with ``{``, else as YAML. Any fault is a 422 naming
    where, never a 500."""
    from common.errors import ManifestError
    from common.manifest import read_document

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            "invalid-manifest", "not UTF-8 text", problems=[{"where": "", "message": "not UTF-8"}]
        ) from None
    try:
        return read_document(text, "body", as_json="json" in content_type.lower())
    except ManifestError as exc:
        found = problems_of(exc.problems)
        raise ApiError("invalid-manifest", "invalid manifest", problems=found) from None


def _read_and_plan(fleet: Settings, who: Team, body: bytes, content_type: str) -> tuple:
    """In a planner process: the body read and planned, or why not, as plain values (what
    crosses between processes): ("ok", plan) | ("error", code, detail, problems, service)."""
    from scheduler import intake

    try:
        data = parse_body(body, content_type)
        job = intake.plan(data, f"web:{who.name}", BASE, submitter(fleet, who))
        intake.check(job, submitter(fleet, who))
    except ApiError as exc:
        return ("error", exc.code, exc.detail, exc.extra.get("problems"), None)
    except Refused as exc:
        return ("error", CODES[exc.title], exc.title, problems_of(exc.problems), None)
    except Unchecked as exc:
        return ("error", "unavailable", str(exc), None, "S3")
    return ("ok", job)


def _ready(parent: int = 0) -> None:
    """A planner's start: the intake's modules imported once, before any manifest comes, and
    a watch on the server that started it: a planner whose server is gone (killed, whatever
    the way) exits within a second instead of lingering."""
    import scheduler.intake  # noqa: F401

    if parent:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(0)

        threading.Thread(target=watch, name="stylebatch-planner-watch", daemon=True).start()


class Planners:
    """The planner processes (spawned on first use, kept; ``count`` 0: plan in the calling
    thread, as tests of one process may want)."""

    def __init__(self, count: int):
        self.count, self.pool, self.lock = count, None, threading.Lock()

    def _pool(self) -> Any:
        with self.lock:
            if self.pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                context = multiprocessing.get_context("spawn")  # nothing of the server's
                self.pool = ProcessPoolExecutor(self.count, mp_context=context, initializer=_ready)
            return self.pool

    def warm(self) -> None:
        """Start the planners now (`serve` does, so the first manifest waits for none)."""
        if self.count > 0:
            pool = self._pool()
            for future in [pool.submit(_ready, 0) for _ in range(self.count)]:
                future.result()

    def run(self, fleet: Settings, who: Team, body: bytes, content_type: str) -> tuple:
        if self.count <= 0:
            return _read_and_plan(fleet, who, body, content_type)
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool()
        try:
            return pool.submit(_read_and_plan, fleet, who, body, content_type).result()
        except BrokenProcessPool:  # a planner died (killed, out of memory): start afresh
            with self.lock:
                if self.pool is pool:
                    self.pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable("the planner", "a planner process died; try again") from None

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:  # what is planning now ends within its listing bound
            pool.shutdown(wait=True, cancel_futures=True)
