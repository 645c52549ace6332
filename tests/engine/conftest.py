"""The engine tier: renders through the torch engine on this machine's CPU, in this process or
through `stylebatch run`, with no service (as tests/unit; a test that asks for one fails). Kept
out of tests/unit because it takes minutes: seconds to a minute and more a test on two cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_folder, refuse_services


def pytest_collection_modifyitems(items):
    mark_folder(items, Path(__file__).parent, pytest.mark.engine)


def pytest_runtest_setup(item):
    refuse_services(item)
