"""How far an output is from a picture, for tests that check what a render kept."""

from __future__ import annotations

import io

from PIL import Image


def distance(output: bytes, picture: Image.Image) -> float:
    """Mean absolute pixel difference between an output and a picture at the output's size."""
    import numpy as np

    out = Image.open(io.BytesIO(output)).convert("RGB")
    ref = picture.convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    return float(np.abs(np.asarray(out, float) - np.asarray(ref, float)).mean())
