"""The unit tier: no service at all (no Redis, no SeaweedFS, no worker process, no Docker) and
no render, so that it passes on a machine with none of them and runs in about a minute: the
dev loop. A test here that asks for a service fails, saying where it belongs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_folder, refuse_services


def pytest_collection_modifyitems(items):
    mark_folder(items, Path(__file__).parent, pytest.mark.unit)


def pytest_runtest_setup(item):
    refuse_services(item)
