"""The fleet tier: render and bookkeeping worker processes over the session's Redis and S3 (one
factory: tests/conftest.py fleet_factory), the fault harness (bench/chaos.py) and Sentinel
sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_folder


def pytest_collection_modifyitems(items):
    mark_folder(items, Path(__file__).parent, pytest.mark.fleet)
