"""Which GPUs this host shows, without torch: CUDA_VISIBLE_DEVICES where it is set, else
nvidia-smi's list. The launcher starts one render worker per GPU (workers/launch.py), and the
pods' health probe (common/health.py) knows their names by it."""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [g for g in pinned.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]
