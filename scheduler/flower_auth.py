"""Flower as the fleet runs it: every page behind its basic auth, /metrics included (Flower
serves its Prometheus endpoint without asking). Run by `stylebatch flower`."""

from __future__ import annotations

import sys

import tornado.web
from flower.views import monitor

_serve_metrics = monitor.Metrics.get


async def _metrics_behind_auth(self: monitor.Metrics) -> None:
    # Flower's own check: with basic auth set, a missing or wrong Authorization is a 401.
    if not self.current_user:
        raise tornado.web.HTTPError(401)
    await _serve_metrics(self)


monitor.Metrics.get = _metrics_behind_auth


def main() -> None:
    from celery.__main__ import main as celery

    sys.argv = ["celery", "-A", "common.celery_app", "flower", *sys.argv[1:]]
    celery()


if __name__ == "__main__":
    main()
