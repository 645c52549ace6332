"""Weight specs as the engine takes them: s3:// URIs are fetched once into the local cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from common.access import check_allowed
from common.errors import InputError
from common.settings import Settings
from common.storage import atomic_write, read_input
from common.uris import is_s3


def local_weights(spec: str, settings: Settings) -> str:
    """A path the engine can load. Weights named by a manifest (not the operator's setting)
    are inputs like any other: they must be allowed."""
    named = spec != "imagenet" and not spec.startswith("random")
    if named and spec != settings.weights:
        check_allowed(spec, settings)
    if not is_s3(spec):
        return spec
    name = hashlib.sha256(spec.encode()).hexdigest()[:16] + ".pth"
    path = Path(settings.cache_dir) / "weights" / name
    if not path.is_file():
        big = Settings(**{**settings.__dict__, "max_input_bytes": 4 << 30})
        try:
            atomic_write(path, read_input(spec, big))
        except InputError as exc:
            raise InputError(f"weights {spec}: {exc}") from None
    return str(path)
