"""The server's context, made once by app.py: its settings, its teams, the job store, and the
parts that keep state of their own (the outputs' thumbnails, the planner processes)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from common.settings import Settings
from common.state import JobStore
from common.teams import Team
from scheduler.web.outputs import Outputs
from scheduler.web.planners import Planners


@dataclass
class Web:
    settings: Settings
    teams: dict[str, Team]
    store: JobStore
    thumbnails: Path
    secure_cookies: bool = False  # the session cookie's Secure flag (app.py)
    # each team's turns to submit, in this process (scheduler/web/intake.py)
    submitting: dict[str, threading.BoundedSemaphore] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    exports: int = 0  # zips being streamed now (scheduler/web/export.py)
    exporting: dict[str, int] = field(default_factory=dict)  # by team

    def begin_export(self, team: str, at_once: int) -> bool:
        """Take a turn to stream an export: one per team, ``at_once`` per server."""
        with self.lock:
            if self.exports >= at_once or self.exporting.get(team, 0) >= 1:
                return False
            self.exports += 1
            self.exporting[team] = self.exporting.get(team, 0) + 1
            return True

    def end_export(self, team: str) -> None:
        with self.lock:
            self.exports -= 1
            self.exporting[team] -= 1

    @cached_property
    def celery(self) -> Any:
        from common.queue import make_app

        return make_app(self.settings)

    @cached_property
    def planners(self) -> Planners:
        return Planners(self.settings.web_planners)

    @cached_property
    def outputs(self) -> Outputs:
        return Outputs(self.settings, self.thumbnails)
