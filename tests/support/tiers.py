"""The tiers' markers and the rule of the two tiers without services. Each tier's conftest.py
marks every test collected under its folder, so that `-m unit` (or engine, integration, fleet,
deploy) selects a tier wherever the tests are named; tests/unit and tests/engine refuse a test
that asks for a service, so that they pass where no Redis, S3 or Docker is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

SERVICE_FIXTURES = {"redis_server", "s3_server", "new_redis_db", "redis_db", "fleet_factory"}
SERVICE_MODULES = (
    "tests.support.services",
    "tests.support.fleet",
    "tests.support.compose_fleet",
    "tests.support.sentinel_tasks",
)


def mark_folder(items: list[pytest.Item], folder: Path, marker: pytest.MarkDecorator) -> None:
    for item in items:
        if item.path.is_relative_to(folder):
            item.add_marker(marker)


def refuse_services(item: pytest.Item) -> None:
    """Fail ``item`` if it asks for a service fixture, or its module imports what starts one."""
    used = sorted(SERVICE_FIXTURES & set(item.fixturenames))
    if used:
        pytest.fail(
            f"{item.path.parent.name} tests use no service, and this one asks for "
            f"{', '.join(used)}: it belongs in tests/integration or above",
            pytrace=False,
        )
    module = getattr(item, "module", None)
    for name, value in vars(module or object()).items():
        origin = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(origin, str) and origin.startswith(SERVICE_MODULES):
            pytest.fail(
                f"{item.path.parent.name} tests use no service, and this module imports {name} "
                f"from {origin}, which starts them",
                pytrace=False,
            )
