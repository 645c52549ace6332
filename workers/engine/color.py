"""Colour handling: luminance-only transfer (YIQ) and histogram matching by mean and
covariance, both after Gatys et al., "Preserving Color in Neural Artistic Style Transfer"."""

from __future__ import annotations

import torch

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", _RGB_TO_YIQ.to(image), image)


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
