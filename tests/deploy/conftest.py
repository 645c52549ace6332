"""The deploy tier: what deploy/ ships, checked by the tools that run it: Docker Compose,
Kubernetes' schemas, kubectl, checkov, promtool, Grafana's and KEDA's schemas (node), and the web
front in a real browser (Debian's chromium). A missing tool skips, saying so (in CI it fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_folder


def pytest_collection_modifyitems(items):
    mark_folder(items, Path(__file__).parent, pytest.mark.deploy)
