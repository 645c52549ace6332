"""Small manifests that render in seconds, written to disk, and the settings `stylebatch run`
plans them with."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def local_settings():
    """What `stylebatch run` plans with: local files may be read and written."""
    import dataclasses

    from common.settings import Settings

    return dataclasses.replace(Settings(), allowed_inputs=("/",), allowed_outputs=("/",))


def write_manifest(folder: Path, data: dict, suffix: str = ".yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"job{suffix}"
    text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data)
    path.write_text(text)
    return path


def tiny_manifest(images: dict[str, Path], out: Path, **params) -> dict:
    """A manifest that renders in seconds on a CPU."""
    return {
        "name": "tiny",
        "output": {"location": str(out)},
        "content": [str(images["tubingen"])],
        "styles": [
            {"name": "starry", "image": str(images["starry_night"])},
            {"name": "wave", "image": str(images["wave"])},
        ],
        "params": {
            "preset": "draft",
            "sizes": [48],
            "pyramid": {"start": 32, "ratio": 1.5, "iterations": 8},
            **params,
        },
    }
