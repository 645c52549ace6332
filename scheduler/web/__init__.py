"""The web front: an HTTP API and server-rendered pages (`stylebatch serve`, docs/web.md)."""
