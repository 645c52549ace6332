"""The web front for tests: its settings over a test fleet, two teams, and the server itself
(uvicorn in a thread, on a free port), as `stylebatch serve` runs it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

from common.settings import Settings
from tests.services import free_port, wait_for

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


# Rates high enough for the tests' bursts (the rate itself: tests/test_tenants.py)
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
