"""Shared fixtures: tiny input images and small deterministic VGG19 weights made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The `stylebatch` command in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """64 px copies of the demo images (content and styles)."""
    out = tmp_path_factory.mktemp("images")
    paths = {}
    for name in ("tubingen", "starry_night", "wave", "shipwreck"):
        img = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        img.thumbnail((64, 64), Image.Resampling.LANCZOS)
        paths[name] = out / f"{name}.png"
        img.save(paths[name])
    return paths


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """VGG19 weights made by the tests: deterministic He-initialised, seed 1234."""
    torch = pytest.importorskip("torch")
    from workers.engine import random_state_dict

    path = tmp_path_factory.mktemp("weights") / "vgg19-test.pth"
    torch.save(random_state_dict(1234), path)
    return path


def local_settings():
    """What `stylebatch run` plans with: local files may be read and written."""
    import dataclasses

    from common.settings import Settings

    return dataclasses.replace(Settings(), allowed_inputs=("/",), allowed_outputs=("/",))


def distance(output: bytes, picture: Image.Image) -> float:
    """Mean absolute pixel difference between an output and a picture at the output's size."""
    import io

    import numpy as np

    out = Image.open(io.BytesIO(output)).convert("RGB")
    ref = picture.convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    return float(np.abs(np.asarray(out, float) - np.asarray(ref, float)).mean())


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from tests.services import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_DBS = iter(range(100, 256))  # 0-99: the fixed numbers some older tests still name


@pytest.fixture
def redis_db(redis_server) -> str:
    """A Redis database of this test's own, empty: its URL."""
    import redis

    url = redis_server.url(next(_DBS))
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.services import S3Server

    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
