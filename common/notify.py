"""Job-end webhooks: what is POSTed, how it is signed, and how one delivery is tried.

The body is JSON: the job's status, outcome and reason, counts, up to 20 failures, cost and
the URI of its summary, with a ``delivery`` id (job id and end time) that a receiver can use
to drop a repeat. The ``X-Stylebatch-Signature`` header is ``t=<unix time>,v1=<hex>``: the
HMAC-SHA256 of ``<t>.<exact body>`` under the secret of the team that submitted the job
(common/teams.py), or the fleet's (STYLEBATCH_WEBHOOK_SECRET) for a job with no team; never a
manifest's. During a rotation there are two ``v1=`` values, one per valid secret. A receiver
checks one of them in constant time and refuses a ``t`` older than five minutes, so a captured
delivery cannot be replayed later (docs/campaigns.md has the snippet).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from common.errors import Problem
from common.settings import Settings
from common.uris import has_dot_segment

SIGNATURE_HEADER = "X-Stylebatch-Signature"
DELIVERY_HEADER = "X-Stylebatch-Delivery"
MAX_FAILURES = 20


MAX_AGE = 300  # seconds: a receiver refuses a delivery signed longer ago (docs/campaigns.md)


def check_webhook(
    url: str | None, settings: Settings, team: str = "", secrets: tuple[str, ...] | None = None
) -> list[Problem]:
    """A manifest's webhook must fall under STYLEBATCH_WEBHOOK_ALLOWED, and there must be a
    secret to sign it with (``secrets``, else ``signing_secrets``): the submitting team's
    own, or the fleet's for a job with no team. A team is not told the fleet's list (other
    teams' receivers may be on it)."""
    if not url:
        return []
    if not any(url_under(url, prefix) for prefix in settings.webhook_allowed):
        allowed = ",".join(settings.webhook_allowed) or "(none)"
        where = "this fleet's" if team else f"STYLEBATCH_WEBHOOK_ALLOWED={allowed}"
        return [Problem("notify.webhook", f"not among the allowed webhooks ({where})")]
    if not (signing_secrets(settings, team) if secrets is None else secrets):
        message = (
            f"team {team} has no webhook secret (webhook_secret in STYLEBATCH_WEB_TEAMS)"
            if team
            else "this fleet signs webhooks and has no STYLEBATCH_WEBHOOK_SECRET set"
        )
        return [Problem("notify.webhook", message)]
    return []


def signing_secrets(settings: Settings, team: str = "") -> tuple[str, ...]:
    """The secrets that sign a job's webhooks: its team's (current, then previous), or the
    fleet's for a job with no team. A team that the settings no longer name has none."""
    if team:
        found = _teams(settings.web_teams, settings).get(team) if settings.web_teams else None
        return found.webhook_secrets if found else ()
    return tuple(s for s in (settings.webhook_secret, settings.webhook_secret_previous) if s)


def _teams(spec: str, settings: Settings) -> dict:
    """The teams, read once per spec (the file is read again after a change of the setting,
    that is, a restart)."""
    from common.teams import load_teams

    key = (spec, settings.allowed_inputs, settings.allowed_outputs)
    if key not in _TEAMS:
        _TEAMS[key] = load_teams(spec, settings)
    return _TEAMS[key]


_TEAMS: dict = {}


def url_under(url: str, prefix: str) -> bool:
    """Same scheme, host and port, and a path under the prefix's at a '/' boundary; a URL
    with credentials in it is never allowed, nor one whose path has a ``.`` or ``..`` segment
    (also percent-encoded, or as ``..;``): refused, not normalised, as the receiver's server
    or a proxy might read it otherwise."""
    u, p = urllib.parse.urlsplit(url), urllib.parse.urlsplit(prefix)
    if u.username or u.password or not u.hostname or u.scheme not in ("http", "https"):
        return False
    if has_dot_segment(u.path):
        return False
    try:
        same_port = (u.port or 0) == (p.port or 0)
    except ValueError:
        return False
    root = p.path.rstrip("/")
    path_ok = not root or u.path == root or u.path.startswith(root + "/")
    return u.scheme == p.scheme and u.hostname == p.hostname and same_port and path_ok


def sign(body: bytes, secrets: tuple[str, ...], at: int | None = None) -> str:
    """``t=<unix time>,v1=<hex>[,v1=<hex>]``: one HMAC-SHA256 of ``<t>.<body>`` per secret."""
    at = int(time.time()) if at is None else at
    signed = f"{at}.".encode() + body
    macs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={at}", *(f"v1={m}" for m in macs)])


def verify(body: bytes, header: str, secret: str, now: float | None = None) -> bool:
    """What a receiver does (docs/campaigns.md has the same in a few lines): the header's
    time is at most MAX_AGE seconds old, and one of its ``v1`` values is the HMAC of
    ``<t>.<body>`` under the receiver's secret, compared in constant time."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [v for k, v in fields if k.strip() == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(stamps[0])) > MAX_AGE:
        return False
    signed = f"{stamps[0]}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v.strip()) for k, v in fields if k.strip() == "v1")


def payload(info: Any, failures: list[dict[str, Any]], summary_uri: str) -> tuple[str, bytes]:
    """(delivery id, body) for an ended job (``JobInfo``)."""
    delivery = f"{info.job_id}:{info.meta.get('finished', '')}"
    counts = {s: info.count(s) for s in ("done", "skipped", "failed", "cancelled")}
    body = {
        "event": "job.ended",
        "delivery": delivery,
        "job": info.job_id,
        "name": info.meta.get("name"),
        "status": info.status,
        "outcome": info.outcome,
        "headline": info.headline,
        "reason": info.meta.get("reason") or None,
        "total": info.total,
        "counts": counts,
        "failures": failures[:MAX_FAILURES],
        "cost": info.cost(),
        "summary": summary_uri,
        "finished": float(info.meta.get("finished") or 0),
    }
    return delivery, json.dumps(body, sort_keys=True).encode()


def review_payload(info: Any, delivery: str, summary_uri: str) -> tuple[str, bytes]:
    """(delivery id, body) for a job whose every output has a review decision: the counts,
    and where the summary (with its review section) is."""
    review = {
        d: int(info.meta.get(f"review:{d}", 0)) for d in ("approved", "rejected", "superseded")
    }
    body = {
        "event": "job.reviewed",
        "delivery": delivery,
        "job": info.job_id,
        "name": info.meta.get("name"),
        "review": review,
        "outputs": info.count("done") + info.count("skipped"),
        "summary": summary_uri,
        "reviewed": float(info.meta.get("reviewed") or 0),
    }
    return delivery, json.dumps(body, sort_keys=True).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is the receiver's answer: the allow-list vetted this URL, not another."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(
    url: str, body: bytes, delivery: str, secrets: tuple[str, ...], timeout: float = 10
) -> str | None:
    """One delivery attempt: None if the receiver answered 2xx, else why not. Redirects are
    never followed: one is a failed delivery, and its target gets nothing."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "stylebatch-webhook",
            SIGNATURE_HEADER: sign(body, secrets),
            DELIVERY_HEADER: delivery,
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        with exc:
            if 300 <= exc.code < 400:
                target = (exc.headers.get("Location") or "(no Location)")[:200]
                return f"HTTP {exc.code}: redirected to {target}; redirects are not followed"
            return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"
