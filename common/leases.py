"""Holding a lease while a long step runs: renewed from a thread every ``every`` seconds, so
the lease can stay short (whoever holds it and dies lets go within seconds) while a slow step
keeps it as long as it lives (a 100,000-render submit, a finalize's summary)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger("stylebatch.leases")


@contextlib.contextmanager
def renewing(renew: Callable[[], object], every: float) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                renew()
            except Exception as exc:  # Redis away: the step's own writes will tell
                log.warning("lease not renewed: %s", exc)

    thread = threading.Thread(target=run, name="stylebatch-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
