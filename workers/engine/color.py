"""Colour handling: luminance-only transfer (YIQ) and histogram matching by mean and
covariance, both after Gatys et al., "Preserving Color in Neural Artistic Style Transfer"."""

from __future__ import annotations

import torch

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", _RGB_TO_YIQ.to(image), image)


_IQ = _RGB_TO_YIQ[1:].tolist()  # Python floats: no host-to-device copy inside a CUDA graph


def chroma(image: torch.Tensor) -> torch.Tensor:
    """YIQ's I and Q of (..., 3, H, W) images: (..., 2, H, W)."""
    r, g, b = image.unbind(-3)
    return torch.stack([i_r * r + i_g * g + i_b * b for i_r, i_g, i_b in _IQ], dim=-3)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB_TO_YIQ).to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The Y channel repeated as RGB."""
    y = rgb_to_yiq(image)[..., :1, :, :]
    return y.expand(*image.shape[:-3], 3, *image.shape[-2:]).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Style as grey, with its luminance mean and spread moved to the content's."""
    ys, yc = rgb_to_yiq(style)[..., :1, :, :], rgb_to_yiq(content)[..., :1, :, :]
    y = (ys - ys.mean()) * (yc.std() / ys.std().clamp_min(1e-6)) + yc.mean()
    return y.clamp(0, 1).expand(*style.shape[:-3], 3, *style.shape[-2:]).contiguous()


def recombine(stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance from the stylised image, chroma (I, Q) from the content."""
    yiq = rgb_to_yiq(content).clone()
    yiq[..., :1, :, :] = rgb_to_yiq(stylised)[..., :1, :, :]
    return yiq_to_rgb(yiq).clamp(0, 1)


def _stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = image.reshape(3, -1).double()
    mean = flat.mean(1, keepdim=True)
    centred = flat - mean
    cov = centred @ centred.T / flat.shape[1] + 1e-5 * torch.eye(3, dtype=flat.dtype)
    return mean, cov


def _sqrtm(cov: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(cov)
    power = -0.5 if inverse else 0.5
    return evecs @ torch.diag(evals.clamp_min(1e-8) ** power) @ evecs.T


def match_histogram(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Style recoloured so its colour mean and covariance are the content's."""
    ms, cs = _stats(style)
    mc, cc = _stats(content)
    transform = _sqrtm(cc) @ _sqrtm(cs, inverse=True)
    flat = style.reshape(3, -1).double()
    out = transform @ (flat - ms) + mc
    return out.reshape(style.shape).to(style.dtype).clamp(0, 1)


def pull_to_palette(
    image: torch.Tensor,
    colors: list[tuple[float, float, float]],
    strength: float,
    protect: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pull an image's colours (3, H, W) towards a palette, after rendering: each pixel's
    chroma (YIQ's I and Q) moves by ``strength`` towards its nearest palette colour's (nearest
    in Y, I and Q), and its luminance is kept, so the brush texture stays and the hues agree
    with the brand. Protected pixels (``protect``, (1, H, W) in [0, 1]) move less, or not.

    Why after rendering and not as a loss: a colour loss fights the style loss over the same
    pixels (the optimiser trades one against the other, and the weights would need tuning per
    style); a pull afterwards is deterministic, costs milliseconds, and its strength means
    the same for every style."""
    if strength <= 0 or not colors:
        return image
    rgb = image.float().reshape(3, -1).T  # (N, 3): pixels first, for fast matmuls
    to_yiq = _RGB_TO_YIQ.to(rgb)
    yiq = rgb @ to_yiq.T
    palette = torch.tensor(colors, dtype=torch.float32) @ to_yiq.T  # (K, 3)
    # nearest by |y - p|^2 = |y|^2 - 2 y.p + |p|^2, whose first term every colour shares
    nearest = (palette.square().sum(1) - 2 * (yiq @ palette.T)).argmin(1)
    pull = palette[nearest, 1:] - yiq[:, 1:]  # chroma only: luminance (texture) is kept
    weight = strength if protect is None else (1 - protect.float().reshape(-1, 1)) * strength
    back = torch.linalg.inv(to_yiq)[:, 1:].T  # (2, 3): a change of I and Q, in RGB
    out = rgb + (pull * weight) @ back
    return out.clamp_(0, 1).T.reshape(image.shape)


def hex_rgb(color: str) -> tuple[float, float, float]:
    """ "#rrggbb" as (r, g, b) in [0, 1]."""
    value = color.lstrip("#")
    return tuple(int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]
