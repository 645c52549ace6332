"""The JSON API, one router per resource (docs/web.md): jobs, renders, schedules, health.
app.py mounts them under /v1, and again at the unversioned paths (documented aliases)."""
