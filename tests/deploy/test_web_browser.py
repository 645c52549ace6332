"""The web front's pages in a real browser (Debian's chromium, driven by Playwright) against a
real fleet: log in, submit, watch a job reach done, its gallery, a render, the contact sheet, a
cancel, and the other team's 404s. Screenshots for docs/web.md on request
(STYLEBATCH_SCREENSHOTS=docs)."""

from __future__ import annotations

import io
import json
import os

import httpx
import pytest
import yaml
from PIL import Image

from tests.support.services import wait_for
from tests.support.tools import CHROMIUM, require
from tests.support.web import TOKENS, bearer, document, serving, wait_ended


@pytest.fixture(scope="module")
def fleet(fleet_factory):
    return fleet_factory(["cpu0", "bookkeeping"])


@pytest.fixture(scope="module")
def served(fleet, tmp_path_factory):
    with serving(fleet, tmp_path_factory.mktemp("web")) as server:
        yield server


@pytest.fixture
def client(served):
    with httpx.Client(base_url=served.url, timeout=30) as c:
        yield c


SHOT_BYTES = 300_000  # the most a screenshot of docs/web.md may weigh


def _until(page, expression: str, timeout: float) -> None:
    """Wait until ``expression`` is true in the page. Polled from here: Playwright's
    wait_for_function evaluates its predicate with eval, which the pages' strict
    Content-Security-Policy (no 'unsafe-eval') refuses, as it should."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {expression}"
        page.wait_for_timeout(200)


def _loaded(page, selector: str) -> list[int]:
    """naturalWidth of every image matched, once each has finished loading (or failed)."""
    _until(page, f"[...document.querySelectorAll({selector!r})].every(i => i.complete)", 30)
    return page.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")


def _all_loaded(page, selector: str) -> int:
    """How many images match, each loaded with a width (a broken image has none)."""
    widths = _loaded(page, selector)
    assert all(w > 0 for w in widths), widths
    return len(widths)


def _shot(page, name: str) -> None:
    """A screenshot for docs/web.md (STYLEBATCH_SCREENSHOTS=docs saves them): a PNG under
    SHOT_BYTES, reduced to 256 colours (dithered) where it would be larger."""
    from tests.support.paths import ROOT

    shots = os.environ.get("STYLEBATCH_SCREENSHOTS")
    if not shots:
        return
    data = page.screenshot()
    if len(data) > SHOT_BYTES:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        image = image.quantize(palette=image.quantize(256), dither=Image.Dither.FLOYDSTEINBERG)
        buf = io.BytesIO()
        image.save(buf, "PNG", optimize=True)
        data = buf.getvalue()
    assert len(data) <= SHOT_BYTES, (name, len(data))
    (ROOT / shots / f"web-{name}.png").write_bytes(data)


def _browser_log_in(browser, served, team: str, height: int = 760):
    page = browser.new_page(viewport={"width": 1000, "height": height}, accept_downloads=True)
    answer = page.goto(f"{served.url}/ui")
    assert answer.status == 401 and page.locator("input[name=token]").count() == 1
    page.fill("input[name=token]", TOKENS[team])
    page.click("button[type=submit]")
    page.wait_for_url(f"{served.url}/ui")
    return page


def _browser_or_skip():
    chromium = require("chromium", CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    return chromium, sync_api


def test_the_pages_in_a_real_browser(served, client):
    """Debian's chromium, driven by Playwright: log in, submit a manifest, watch the job reach
    done, every gallery thumbnail loaded, a render's page, the contact sheet; cancel a second
    job; the other team's session gets 404 for these jobs. STYLEBATCH_SCREENSHOTS=docs saves
    the screenshots of docs/web.md."""
    chromium, sync_api = _browser_or_skip()
    shot = _shot

    def log_in(browser, team: str):
        return _browser_log_in(browser, served, team)

    def submit(page, data: dict) -> str:
        page.fill("textarea[name=manifest]", yaml.safe_dump(data, sort_keys=False))
        page.click("#send")
        page.wait_for_url("**/ui/jobs/*")
        return page.url.rsplit("/", 1)[-1]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        alpha = log_in(browser, "alpha")
        styles = ("starry_night", "wave", "shipwreck")
        job = submit(alpha, document("web-browser", styles=styles, sizes=[40, 48]))
        _until(alpha, "document.querySelector('#job [data-field=status]')?.textContent", 5)
        _until(
            alpha, "document.querySelector('#job [data-field=status]')?.textContent === 'done'", 240
        )
        alpha.wait_for_load_state("load")
        assert alpha.locator("#job [data-field=done]").inner_text() == "6"
        shot(alpha, "job")

        alpha.click("text=gallery")
        alpha.wait_for_url("**/gallery")
        assert _all_loaded(alpha, "#gallery img") == 6
        shot(alpha, "gallery")
        alpha.select_option("select[name=style]", "wave")
        alpha.click("#filters button")
        alpha.wait_for_url("**/gallery?*style=wave*")
        assert _all_loaded(alpha, "#gallery img") == 2

        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert _all_loaded(alpha, "#output") == 1
        assert alpha.locator("#credentials").inner_text().startswith("no")
        assert "pyramid" in alpha.content()
        shot(alpha, "render")

        alpha.goto(f"{served.url}/ui/jobs/{job}/contact-sheet")
        assert _all_loaded(alpha, "#sheet") == 1
        shot(alpha, "contact-sheet")

        alpha.goto(f"{served.url}/ui")
        second = submit(alpha, document("web-browser-cancel", styles=styles, sizes=[40, 48, 56]))
        alpha.click("#cancel")
        alpha.wait_for_url(f"**/ui/jobs/{second}")
        record = client.get(f"/jobs/{second}", headers=bearer("alpha")).json()
        assert record["cancel_requested"] is True
        assert alpha.locator(".tag", has_text="cancel requested").count() == 1
        assert alpha.locator("#notice").inner_text().startswith("cancel requested")
        alpha.goto(f"{served.url}/ui")
        assert alpha.locator(f"#jobs tr[data-job='{job}']").count() == 1
        shot(alpha, "jobs")

        beta = log_in(browser, "beta")
        for path in (f"/ui/jobs/{job}", f"/ui/jobs/{second}/gallery"):
            assert beta.goto(f"{served.url}{path}").status == 404
        beta.goto(f"{served.url}/ui")
        assert beta.locator("#jobs").count() == 1
        assert beta.locator(f"#jobs tr[data-job='{job}']").count() == 0
        browser.close()
    wait_ended(client, second)


def test_a_review_session_in_a_real_browser(fleet, served, client, s3_server, tmp_path):
    """The campaign team's morning (docs/web.md, Review): in chromium, approve three renders
    with the keyboard and reject one with a note; re-render the rejected one with more style;
    approve its new version (superseding the old); export the approved set: exactly the four
    approved outputs, byte for byte with S3, and a CSV that agrees. Two tabs decide on the
    same render: the later one is told, nothing is lost. The summary on S3 gets the review."""
    import csv
    import zipfile

    chromium, sync_api = _browser_or_skip()
    first = client.post(
        "/jobs", json=document("web-review", sizes=[40, 48]), headers=bearer("alpha")
    )
    job = first.json()["job"]
    assert wait_ended(client, job)["done"] == 4
    renders = client.get(f"/v1/jobs/{job}/renders", headers=bearer("alpha")).json()["renders"]
    s3 = s3_server.client()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        alpha = _browser_log_in(browser, served, "alpha", height=900)
        alpha.goto(f"{served.url}/ui/jobs/{job}/gallery")
        assert _all_loaded(alpha, "#gallery img") == 4
        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert _all_loaded(alpha, "#content-photo") == 1 and _all_loaded(alpha, "#output") == 1
        _shot(alpha, "review")
        for _ in range(3):  # a approves, and moves on to the next render
            before = alpha.url
            alpha.keyboard.press("a")
            alpha.wait_for_url(lambda url, before=before: url != before)
            assert "1 render(s) approved" in alpha.locator("#notice").inner_text()
        rejected = alpha.url.split("/renders/", 1)[1].split("?")[0]
        alpha.keyboard.press("n")
        alpha.keyboard.type("too busy: more of the painting")
        alpha.click("#reject")
        alpha.wait_for_url(f"**/renders/{rejected}*")
        assert alpha.locator("#decision .badge-rejected").count() == 1
        assert alpha.locator("#review-note").inner_text() == "too busy: more of the painting"

        detail = client.get(f"/v1/jobs/{job}/renders/{rejected}", headers=bearer("alpha")).json()
        more = detail["params"]["style_weight"] * 4
        assert alpha.locator("#rerender-box[open]").count() == 1  # open for a rejected render
        alpha.fill("#rerender input[name=style_weight]", str(more))
        _shot(alpha, "rerender")
        alpha.click("#rerender-send")
        alpha.wait_for_url("**/ui/jobs/*")
        child = alpha.url.rsplit("/", 1)[-1]
        assert (
            child != job
            and "re-render submitted: 1 render(s)" in alpha.locator("#notice").inner_text()
        )
        assert wait_ended(client, child)["done"] == 1
        alpha.goto(f"{served.url}/ui/jobs/{child}/gallery")
        alpha.click("#gallery li a >> nth=0")
        alpha.wait_for_url("**/renders/*")
        assert alpha.locator("#parent").count() == 1
        alpha.click("#approve")
        alpha.wait_for_url("**/renders/*")
        assert "1 earlier version(s) superseded" in alpha.locator("#notice").inner_text()

        alpha.goto(f"{served.url}/ui/jobs/{job}/renders/{rejected}")
        assert alpha.locator("#decision .badge-superseded").count() == 1
        assert alpha.locator("#versions .version").count() == 1
        alpha.goto(f"{served.url}/ui/jobs/{job}/gallery")
        assert alpha.locator(".badge-approved").count() == 3
        assert alpha.locator(".badge-superseded").count() == 1
        _shot(alpha, "gallery-review")
        with alpha.expect_download() as download:
            alpha.click("#export")
        saved = tmp_path / "approved.zip"
        download.value.save_as(saved)

        # two tabs on one render: the second is told, not overwritten
        first_render = sorted(r["render"] for r in renders if r["render"] != rejected)[0]
        tabs = [_browser_log_in(browser, served, "alpha") for _ in range(2)]
        for tab in tabs:
            tab.goto(f"{served.url}/ui/jobs/{job}/renders/{first_render}")
        tabs[0].fill("#note", "keep: the hero shot")
        tabs[0].click("#approve")
        tabs[0].wait_for_load_state("load")
        tabs[1].fill("#note", "drop it")
        tabs[1].click("#reject")
        tabs[1].wait_for_url(f"**/renders/{first_render}*")
        told = tabs[1].locator("#notice")
        assert told.get_attribute("class") == "notice refused"
        assert "not recorded: decided meanwhile: approved by alpha" in told.inner_text()
        assert tabs[1].locator("#review-note").inner_text() == "keep: the hero shot"
        alpha.goto(f"{served.url}/ui/jobs/{job}/compare?content=tubingen")
        assert _all_loaded(alpha, "#compare img") == 4
        _shot(alpha, "compare")
        browser.close()

    archive = zipfile.ZipFile(saved)
    outputs = [n for n in archive.namelist() if n.endswith(".png")]
    assert len(outputs) == 4 and set(archive.namelist()) == {*outputs, "renders.csv"}
    rows = list(csv.DictReader(io.StringIO(archive.read("renders.csv").decode())))
    assert sorted(r["key"] for r in rows) == sorted(outputs)
    assert {r["decision"] for r in rows} == {"approved"}
    assert sum(r["job"] == child for r in rows) == 1 and rejected not in {r["render"] for r in rows}
    prefix = "alpha/web-review/"
    for row in rows:
        held = s3.get_object(Bucket="outputs", Key=prefix + row["key"])["Body"].read()
        assert archive.read(row["key"]) == held, row["key"]
        assert float(row["cost_device_seconds"]) > 0 and row["device"] == "cpu"
    summary_key = f"{prefix}_jobs/{job}/summary.json"

    def reviewed() -> bool:
        data = json.loads(s3.get_object(Bucket="outputs", Key=summary_key)["Body"].read())
        return data["review"] == {"approved": 3, "rejected": 0, "superseded": 1, "undecided": 0}

    wait_for(reviewed, 60, "the summary's review section")
    cost = s3.get_object(Bucket="outputs", Key=f"{prefix}_jobs/{job}/cost.csv")["Body"].read()
    decided = {r["render"]: r["decision"] for r in csv.DictReader(io.StringIO(cost.decode()))}
    assert decided[rejected] == "superseded" and list(decided.values()).count("approved") == 3
