"""The integration tier: real Redis and SeaweedFS on loopback (tests/support/services.py), the
code under test in this process or in command-line processes; no worker process renders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from common.settings import Settings
from tests.support.tiers import mark_folder
from tests.support.web import GENEROUS, TOKENS


def pytest_collection_modifyitems(items):
    mark_folder(items, Path(__file__).parent, pytest.mark.integration)


@pytest.fixture
def local(redis_db, tmp_path, images):
    """(settings, a TestClient of its app, the app, the inputs folder) over local folders."""
    import hashlib
    import shutil

    from fastapi.testclient import TestClient

    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    for name in ("tubingen", "starry_night", "wave"):
        shutil.copy(images[name], inputs / f"{name}.png")
    teams = {
        name: {
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "allowed_inputs": [str(inputs)],
            "allowed_outputs": [str(outputs / name)],
        }
        for name, token in TOKENS.items()
    }
    settings = dataclasses.replace(
        Settings(),
        redis_url=redis_db,
        allowed_inputs=(str(inputs),),
        allowed_outputs=(str(outputs),),
        cache_dir=tmp_path / "cache",
        weights="random",
        web_teams=json.dumps(teams),
        web_thumbnails=str(tmp_path / "thumbnails"),
        **GENEROUS,
    )
    from scheduler.web.app import create_app

    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as web:
        yield settings, web, app, inputs
