"""Measures of a finished image that do not come from the optimiser's own loss: used by
bench/quality.py to choose defaults and by the tests to hold them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.color import rgb_to_yiq


def _high_frequency(channels: torch.Tensor) -> torch.Tensor:
    """Mean |c - box3(c)| per channel of (C, H, W): the energy a 3x3 blur removes."""
    blurred = F.avg_pool2d(F.pad(channels[None], (1, 1, 1, 1), mode="replicate"), 3, 1)[0]
    return (channels - blurred).abs().mean((1, 2))


def chroma_ratio(image: torch.Tensor) -> float:
    """Colour speckle: the high-frequency energy of the YIQ chroma channels (I and Q, averaged)
    over the same of luma (Y), of one (3, H, W) image in [0, 1], at its own size. A photo or a
    painting is 0.2-0.4; pixel-level colour noise that is in neither input pushes it to 0.8."""
    hf = _high_frequency(rgb_to_yiq(image.float().clamp(0, 1)))
    return float(hf[1:].mean() / hf[0].clamp_min(1e-12))


def speckle_bound(content: torch.Tensor, style: torch.Tensor, size: tuple[int, int]) -> float:
    """The most chroma_ratio a render of ``content`` in ``style`` at ``size`` may have: 1.3x
    the larger of its inputs' own ratios at that size."""
    own = [chroma_ratio(_resized(image, size)) for image in (content, style)]
    return 1.3 * max(own)


def border_ratio(out: torch.Tensor, content: torch.Tensor, band: int) -> float:
    """How far the outer ``band`` pixels moved from the content, against the interior."""
    moved = (out.float() - content.float()).abs().mean(0)
    edge = torch.zeros_like(moved, dtype=torch.bool)
    edge[:band], edge[-band:], edge[:, :band], edge[:, -band:] = True, True, True, True
    return float(moved[edge].mean() / moved[~edge].mean().clamp_min(1e-12))


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    down = size[0] < image.shape[-2]
    return F.interpolate(
        image[None].float(), size=size, mode="bicubic", align_corners=False, antialias=down
    )[0].clamp(0, 1)
