"""What a manifest may read and write: prefixes matched at boundaries, outputs confined to the
allowed list and kept off the fleet's weights, schedules, code and configuration, at validate
and submit (the command line) and in every write (storage). The file modes of what `stylebatch
run` writes: tests/engine/test_access.py."""

from __future__ import annotations

import dataclasses
import site
import subprocess
import sys
from pathlib import Path

import pytest

from common.access import OutputRefused, check_allowed, check_output, under
from common.errors import InputError
from common.settings import Settings
from common.storage import open_storage
from common.uris import Location
from tests.support.commands import run_cli
from tests.support.manifests import tiny_manifest, write_manifest
from tests.support.paths import ROOT

FLEET = Settings(
    weights="s3://models/vgg19-imagenet.pth",
    schedules="s3://manifests/schedules/",
    allowed_outputs=("s3://team-a", "s3://shared/team-a/"),
)


@pytest.mark.parametrize(
    ("target", "prefix", "inside"),
    [
        ("s3://team-a/x.png", "s3://team-a", True),
        ("s3://team-a-secrets/x.png", "s3://team-a", False),
        ("s3://team-a/shots/x.png", "s3://team-a/shots", True),
        ("s3://team-a/shots-old/x.png", "s3://team-a/shots", False),
        ("s3://team-a/shots", "s3://team-a/shots/", True),
        ("s3://anything/x.png", "s3://", True),
        ("/data/in/x.png", "/data/in", True),
        ("/data/inbox/x.png", "/data/in", False),
        ("/data/in/../secret/x.png", "/data/in", False),
        ("/data/in/x.png", "s3://", False),
    ],
)
def test_prefixes_match_at_boundaries(target, prefix, inside):
    assert under(target, prefix) is inside


def test_symlinks_are_resolved_before_matching(tmp_path):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "secret")
    assert not under(str(tmp_path / "allowed" / "link" / "x.png"), str(tmp_path / "allowed"))


def test_inputs_in_a_bucket_sharing_a_prefix_are_refused():
    settings = Settings(allowed_inputs=("s3://team-a",))
    check_allowed("s3://team-a/shots/x.png", settings)
    with pytest.raises(InputError, match="STYLEBATCH_ALLOWED_INPUTS=s3://team-a"):
        check_allowed("s3://team-a-secrets/x.png", settings)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("s3://models/vgg19-imagenet.pth", "the fleet's weights (STYLEBATCH_WEIGHTS)"),
        ("s3://models", "the fleet's weights"),  # a location holding them
        ("s3://manifests/schedules/daily.yaml", "STYLEBATCH_SCHEDULES"),
        (site.getsitepackages()[0] + "/evil.pth", "the fleet's code"),
        (str(ROOT / "common" / "x.py"), "the fleet's code"),
        (sys.prefix, "the fleet's code"),
        ("/etc/cron.d/x", "the system's programs"),
        ("s3://team-a-secrets/x.png", "STYLEBATCH_ALLOWED_OUTPUTS=s3://team-a,s3://shared/team-a/"),
        ("s3://shared/team-b/x.png", "STYLEBATCH_ALLOWED_OUTPUTS"),
        ("/tmp/stylebatch-out/x.png", "STYLEBATCH_ALLOWED_OUTPUTS"),  # local: not listed
    ],
)
def test_outputs_refused(uri, fragment):
    """The fleet's own locations are named where the settings would allow writing there; a
    location outside the allowed outputs is refused as such, first, without saying what it
    holds (a team is not told about what lies outside its prefixes)."""
    everywhere = dataclasses.replace(FLEET, allowed_outputs=("s3://", "/"))
    protected = "ALLOWED_OUTPUTS" not in fragment
    with pytest.raises(OutputRefused) as info:
        check_output(uri, everywhere if protected else FLEET)
    assert fragment in str(info.value)
    assert uri not in str(info.value)  # the refusal names the rule, not the location
    if protected:
        with pytest.raises(OutputRefused, match="not among the outputs") as info:
            check_output(uri, FLEET)
        assert "fleet's" not in str(info.value) and "system" not in str(info.value)


def test_outputs_allowed_and_the_protected_list_wins_over_the_allowed_one(tmp_path):
    check_output("s3://team-a/campaign/x.png", FLEET)
    check_output("s3://shared/team-a/x.png", FLEET)
    local = Settings(allowed_outputs=("/",))  # what `stylebatch run` uses
    check_output(str(tmp_path / "out" / "x.png"), local)
    for uri in (str(Path(site.getsitepackages()[0]) / "x.pth"), "/usr/lib/x"):
        with pytest.raises(OutputRefused, match="refused as an output"):
            check_output(uri, local)
    everywhere = Settings(weights="s3://models/w.pth", allowed_outputs=("s3://",))
    with pytest.raises(OutputRefused, match="weights"):
        check_output("s3://models/w.pth", everywhere)


def test_every_write_is_checked_again_in_storage(tmp_path):
    """A hand-made job record cannot get round validate and submit."""
    storage = open_storage(Location("file", str(tmp_path / "out")), Settings())
    with pytest.raises(OutputRefused, match="STYLEBATCH_ALLOWED_OUTPUTS=s3://"):
        storage.put("x.png", b"data", "image/png", {})
    assert not (tmp_path / "out").exists()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env, timeout=120)


@pytest.mark.parametrize(
    ("location", "fragment", "allowed"),
    [
        ("s3://stylebatch-models/fleet", "STYLEBATCH_WEIGHTS", "s3://,/"),
        ("s3://stylebatch-manifests/schedules", "STYLEBATCH_SCHEDULES", "s3://,/"),
        ("s3://team-a-secrets/out", "STYLEBATCH_ALLOWED_OUTPUTS", "s3://team-a"),
        (site.getsitepackages()[0], "the fleet's code", "s3://,/"),
        (site.getsitepackages()[0], "STYLEBATCH_ALLOWED_OUTPUTS", "s3://team-a"),
    ],
)
def test_validate_and_submit_refuse_before_anything_is_enqueued(
    tmp_path, images, location, fragment, allowed
):
    data = tiny_manifest(images, tmp_path / "out")
    data["output"]["location"] = location
    path = write_manifest(tmp_path, data)
    env = {
        "STYLEBATCH_WEIGHTS": "s3://stylebatch-models/vgg19-imagenet.pth",
        "STYLEBATCH_SCHEDULES": "s3://stylebatch-manifests/schedules/",
        "STYLEBATCH_ALLOWED_OUTPUTS": allowed,
        "STYLEBATCH_ALLOWED_INPUTS": "/",
        "STYLEBATCH_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing may reach Redis
    }
    for command in (["validate", "--offline"], ["validate"], ["submit"]):
        result = cli(*command, str(path), "--weights", "random", env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert fragment in " ".join(result.stderr.split()), result.stderr
        assert "output.location" in result.stderr


@pytest.mark.parametrize(
    ("bucket", "prefix", "key", "fragment"),
    [
        ("models", "", "vgg19-imagenet.pth", "STYLEBATCH_WEIGHTS"),
        ("manifests", "schedules", "daily.yaml", "STYLEBATCH_SCHEDULES"),
        ("team-a-secrets", "x", "a.png", "STYLEBATCH_ALLOWED_OUTPUTS"),
    ],
)
def test_s3_writes_are_checked_before_any_request(bucket, prefix, key, fragment):
    settings = (
        FLEET
        if "ALLOWED" in fragment
        else Settings(**{**FLEET.__dict__, "allowed_outputs": ("s3://",)})
    )
    storage = open_storage(Location("s3", bucket, prefix), settings)  # no server: never reached
    with pytest.raises(OutputRefused, match=fragment):
        storage.put(key, b"data", "image/png", {})


# `..` (and `.`) segments: refused in S3 keys and webhook paths (S3 keeps them literally, and a
# receiver's server may resolve them), normalised in local paths (resolved as the system will).
DOTTED_S3 = [
    "s3://inputs/team-a/../team-b/x.png",
    "s3://inputs/team-a/./x.png",
    "s3://inputs/team-a/%2e%2e/team-b/x.png",
    "s3://inputs/team-a/%2E%2e/team-b/x.png",
    "s3://inputs/team-a/%252e%252e/team-b/x.png",  # encoded twice
    "s3://inputs/team-a/..%2fteam-b/x.png",
    "s3://inputs/team-a/..",
]


@pytest.mark.parametrize("uri", DOTTED_S3)
def test_s3_keys_with_dot_segments_are_refused_everywhere(uri):
    from common.uris import canonical_uri, parse_location, parse_s3

    settings = Settings(allowed_inputs=("s3://inputs/team-a/",), allowed_outputs=("s3://inputs",))
    assert not under(uri, "s3://inputs/team-a/") and not under(uri, "s3://inputs")
    with pytest.raises(InputError, match=r"'\.\.' segments are not allowed"):
        check_allowed(uri, settings)
    with pytest.raises(OutputRefused, match=r"'\.\.' segments are not allowed"):
        check_output(uri, settings)
    root = Path("/")
    for parse in (parse_s3, lambda u: canonical_uri(u, root), lambda u: parse_location(u, root)):
        with pytest.raises(ValueError, match=r"'\.\.' segments are not allowed"):
            parse(uri)


def test_s3_keys_that_only_look_dotted_are_kept():
    settings = Settings(allowed_inputs=("s3://inputs/team-a/",))
    for name in ("v1.2/x.png", "...x.png", "x..png", "..x/y.png"):
        check_allowed(f"s3://inputs/team-a/{name}", settings)


def test_local_dot_segments_are_normalised_before_the_allow_list(tmp_path):
    from common.uris import canonical_uri

    (tmp_path / "team-a").mkdir()
    settings = Settings(allowed_inputs=(str(tmp_path / "team-a"),))
    dotted = f"{tmp_path}/team-a/../team-b/x.png"
    assert canonical_uri(dotted, Path("/")) == f"{tmp_path}/team-b/x.png"
    with pytest.raises(InputError, match="not among the inputs"):
        check_allowed(dotted, settings)
    check_allowed(f"{tmp_path}/team-b/../team-a/x.png", settings)  # it does land in team-a
    with pytest.raises(OutputRefused, match="STYLEBATCH_ALLOWED_OUTPUTS"):
        check_output(dotted, Settings(allowed_outputs=(str(tmp_path / "team-a"),)))


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/team-a/../admin",
        "https://hooks.example/team-a/./x",
        "https://hooks.example/team-a/%2e%2e/admin",
        "https://hooks.example/team-a/%2E%2E/admin",
        "https://hooks.example/team-a/.%2e/admin",
        "https://hooks.example/team-a/%252e%252e/admin",
        "https://hooks.example/team-a/..%2fadmin",
        "https://hooks.example/team-a/..;/admin",
        "https://hooks.example/team-a/..\\admin",
        "https://hooks.example/team-a/..",
    ],
)
def test_webhook_paths_with_dot_segments_are_refused(url):
    from common.notify import check_webhook, url_under

    settings = Settings(webhook_allowed=("https://hooks.example/team-a/",), webhook_secret="s")
    assert not url_under(url, "https://hooks.example/team-a/")
    [problem] = check_webhook(url, settings)
    assert problem.where == "notify.webhook" and "not among the allowed webhooks" in problem.message
    assert check_webhook("https://hooks.example/team-a/v1.2/done", settings) == []


def test_a_webhook_redirect_is_a_failed_delivery_and_its_target_gets_nothing():
    import http.server
    import threading

    from common.notify import check_webhook, post

    hits: dict[str, list[str]] = {"allowed": [], "target": []}

    def server(name: str, answer) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                hits[name].append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer(self)

            do_GET = do_POST  # a 303 would be followed with a GET

            def log_message(self, *args):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def ok(handler):
        handler.send_response(200)
        handler.end_headers()

    target = server("target", ok)
    elsewhere = f"http://127.0.0.1:{target.server_port}/stolen"
    codes: list[int] = []

    def redirect(handler):
        handler.send_response(codes[-1])
        handler.send_header("Location", elsewhere)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    allowed = server("allowed", redirect)
    try:
        url = f"http://127.0.0.1:{allowed.server_port}/hooks/campaign"
        prefix = f"http://127.0.0.1:{allowed.server_port}/hooks/"
        settings = Settings(webhook_allowed=(prefix,), webhook_secret="s")
        assert check_webhook(url, settings) == []
        for code in (301, 302, 303, 307, 308):
            codes.append(code)
            error = post(url, b"{}", "job:1", "s", timeout=5)
            assert error == (
                f"HTTP {code}: redirected to {elsewhere}; redirects are not followed"
            ), error
        assert len(hits["allowed"]) == 5
        assert hits["target"] == []  # the redirect's target got no request at all
    finally:
        for srv in (allowed, target):
            srv.shutdown()
            srv.server_close()
