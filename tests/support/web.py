"""The web front for tests: its settings over a test fleet, two teams, the server itself
(uvicorn in a thread, on a free port) as `stylebatch serve` runs it, and the manifests and
waits that the fleet's web tests share (tests/fleet/test_web_api.py and
tests/deploy/test_web_browser.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import yaml

from common.settings import Settings
from tests.support.services import free_port, wait_for

TOKENS = {"alpha": "alpha-token-0123456789abcdef", "beta": "beta-token-0123456789abcdef"}


def teams_json(inputs: str = "s3://inputs", outputs: str = "s3://outputs") -> str:
    return json.dumps(
        {
            name: {
                "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                "allowed_inputs": [inputs],
                "allowed_outputs": [f"{outputs}/{name}"],
            }
            for name, token in TOKENS.items()
        }
    )


# Rates high enough for the tests' bursts (the rate itself: tests/integration/test_tenants.py)
GENEROUS = {"web_request_burst": 100_000, "web_submit_burst": 10_000}


def web_settings(base: Settings, folder: Path, **teams) -> Settings:
    return dataclasses.replace(
        base,
        web_teams=teams_json(**teams),
        web_thumbnails=str(folder / "thumbnails"),
        **GENEROUS,
    )


def bearer(team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[team]}"}


class Served:
    """A uvicorn server of ``app`` in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 15, "web server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def log_in(client, team: str):
    """Log ``client`` (httpx or a TestClient) in through the login page, as a browser does:
    the form's pre-login anti-forgery value, then the token; returns the POST's answer."""
    import re

    form = client.get("/ui/login")
    value = re.search(r'name="login_csrf" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/ui/login",
        data={"token": TOKENS[team], "login_csrf": value, "next": "/ui"},
        follow_redirects=False,
    )


def session_csrf(client) -> str:
    """The forms' anti-forgery value of the client's session (as the pages embed it)."""
    from scheduler.web.deps import csrf_token

    return csrf_token(client.cookies.get("sb_session", ""))


def document(name: str, team: str = "alpha", styles=("starry_night", "wave"), **params) -> dict:
    """A manifest of the fleet's uploaded images (tests/support/fleet.py upload_inputs) that
    writes under ``team``'s outputs."""
    return {
        "name": name,
        "output": {"location": f"s3://outputs/{team}/{name}"},
        "content": ["s3://inputs/img/tubingen.png"],
        "styles": [{"name": s, "image": f"s3://inputs/img/{s}.png"} for s in styles],
        "params": {
            "preset": "draft",
            "sizes": [40],
            "pyramid": {"start": 32, "ratio": 1.5, "iterations": 4},
            **params,
        },
    }


@contextmanager
def serving(fleet, folder: Path) -> Iterator[Served]:
    """The server in this process, with the fleet's settings and S3 keys (boto3 reads them
    from the environment, as in `stylebatch serve`); its settings as ``.settings``."""
    from scheduler.web.app import create_app

    with mock.patch.dict(os.environ, fleet.settings_env()):
        settings = web_settings(fleet.settings(), folder)
        server = Served(create_app(settings))
        server.settings = settings
        try:
            yield server
        finally:
            server.stop()


def wait_ended(client, job: str, team: str = "alpha", timeout: float = 180) -> dict:
    """Poll the job through the API until it ends; its last record."""
    found = {}

    def ended() -> bool:
        found.update(client.get(f"/jobs/{job}", headers=bearer(team)).json())
        return found["status"] in ("done", "failed", "cancelled")

    wait_for(ended, timeout, f"job {job}")
    return found


# A server over local folders (tests/integration/conftest.py's ``local``): its manifests.


def local_doc(inputs, name: str, team: str = "alpha", contents=("tubingen",), sizes=(40,)):
    return {
        "name": name,
        "output": {"location": str(inputs.parent / "outputs" / team / name)},
        "content": [str(inputs / f"{c}.png") for c in contents],
        "styles": [
            {"name": s, "image": str(inputs / f"{s}.png")} for s in ("starry_night", "wave")
        ],
        "params": {"preset": "draft", "sizes": list(sizes)},
    }


def local_post(web, data, team: str = "alpha", kind: str = "application/json"):
    body = json.dumps(data) if "json" in kind else yaml.safe_dump(data)
    return web.post("/jobs", content=body, headers={**bearer(team), "Content-Type": kind})
