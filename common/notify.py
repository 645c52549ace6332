"""Job-end webhooks: what is POSTed, how it is signed, and how one delivery is tried.

The body is JSON: the job's status and reason, counts, up to 20 failures, cost and the URI of
its summary, with a ``delivery`` id (job id and end time) that a receiver can use to drop a
repeat. The ``X-Stylebatch-Signature`` header is ``sha256=`` and the HMAC-SHA256 of the exact
body under STYLEBATCH_WEBHOOK_SECRET (a setting, never the manifest's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
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


def check_webhook(url: str | None, settings: Settings) -> list[Problem]:
    """A manifest's webhook must fall under STYLEBATCH_WEBHOOK_ALLOWED, and the fleet must
    have a secret to sign with."""
    if not url:
        return []
    allowed = ",".join(settings.webhook_allowed) or "(none)"
    if not any(url_under(url, prefix) for prefix in settings.webhook_allowed):
        message = f"{url} is not among the allowed webhooks (STYLEBATCH_WEBHOOK_ALLOWED={allowed})"
        return [Problem("notify.webhook", message)]
    if not settings.webhook_secret:
        message = "this fleet signs webhooks and has no STYLEBATCH_WEBHOOK_SECRET set"
        return [Problem("notify.webhook", message)]
    return []


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


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str, secret: str) -> bool:
    """What a receiver does (in Python): compare in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


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
        "reason": info.meta.get("reason") or None,
        "total": info.total,
        "counts": counts,
        "failures": failures[:MAX_FAILURES],
        "cost": info.cost(),
        "summary": summary_uri,
        "finished": float(info.meta.get("finished") or 0),
    }
    return delivery, json.dumps(body, sort_keys=True).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is the receiver's answer: the allow-list vetted this URL, not another."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, delivery: str, secret: str, timeout: float = 10) -> str | None:
    """One delivery attempt: None if the receiver answered 2xx, else why not. Redirects are
    never followed: one is a failed delivery, and its target gets nothing."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "stylebatch-webhook",
            SIGNATURE_HEADER: sign(body, secret),
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
