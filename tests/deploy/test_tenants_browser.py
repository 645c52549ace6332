"""A forged login in a real browser (Debian's chromium, driven by Playwright): another site's
page auto-submits an attacker's token to the login form, and the victim stays in their own
team. The same refusals without a browser: tests/integration/test_tenants.py."""

from __future__ import annotations

import threading

import pytest

from tests.support.tenants import fleet_settings, two_teams
from tests.support.tools import CHROMIUM, require


@pytest.fixture(scope="module")
def world(s3_server, tmp_path_factory):
    """Two teams on the session's S3 and local folders (tests/support/tenants.py)."""
    with two_teams(s3_server, tmp_path_factory.mktemp("disk")) as world:
        yield world


def test_a_forged_login_page_on_another_site_in_a_real_browser(world, redis_db):
    """Debian's chromium: the victim is logged in as beta; a page served from another origin
    auto-submits alpha's token to the login form. The victim is still beta afterwards."""
    import http.server

    chromium = require("chromium", CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from scheduler.web.app import create_app
    from tests.support.services import free_port
    from tests.support.web import TOKENS, Served

    server = Served(create_app(fleet_settings(world, redis_db)))
    evil_port = free_port()
    target = f"{server.url}/ui/login"
    page_html = (
        f'<html><body><form id="f" method="post" action="{target}">'
        f'<input name="token" value="{TOKENS["alpha"]}"><input name="next" value="/ui">'
        '</form><script>document.getElementById("f").submit()</script></body></html>'
    ).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", evil_port), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{server.url}/ui")
            page.fill("input[name=token]", TOKENS["beta"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{server.url}/ui")
            assert "team beta" in page.content()
            # another site (localhost, another port): its form posts the attacker's token
            answer = {}
            page.on("response", lambda r: answer.setdefault(r.url, r.status))
            page.goto(f"http://localhost:{evil_port}/")
            page.wait_for_load_state("networkidle")
            assert answer.get(target) == 403, answer
            page.goto(f"{server.url}/ui")
            assert "team beta" in page.content() and "team alpha" not in page.content()
            browser.close()
    finally:
        evil.shutdown()
        server.stop()
