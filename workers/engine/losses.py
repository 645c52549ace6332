"""Style, content and smoothness losses. Statistics and losses are fp32 whatever the network's
precision, and every loss is relative to its target's magnitude, so weights mean the same for
any VGG weights and any image size. Each returns one value per image in the batch."""

from __future__ import annotations

import torch


def _flat(feat: torch.Tensor) -> torch.Tensor:
    """Features as (B, HW, C) fp32, without a copy beyond the cast for channels_last input."""
    if feat.is_contiguous(memory_format=torch.channels_last) and feat.dim() == 4:
        return feat.permute(0, 2, 3, 1).reshape(feat.shape[0], -1, feat.shape[1]).float()
    return feat.flatten(2).transpose(1, 2).float()


def moments(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image channel mean (B, C) and uncentred second moment (Gram, B x C x C)."""
    flat = _flat(feat)
    count = flat.shape[1]
    return flat.mean(1), torch.bmm(flat.transpose(1, 2), flat) / count


class StyleTarget:
    """Blended target statistics of one layer, prepared once per scale."""

    def __init__(self, mean: torch.Tensor, gram: torch.Tensor, kind: str):
        self.kind = kind
        self.mean, self.gram = mean, gram
        if kind == "gram":
            self.norm = gram.square().sum((1, 2)).clamp_min(1e-12)
        else:
            cov = gram - mean.unsqueeze(2) * mean.unsqueeze(1)
            evals, evecs = torch.linalg.eigh(cov.double())
            root = (evecs * evals.clamp_min(0).sqrt().unsqueeze(1)) @ evecs.transpose(1, 2)
            self.cov_root = root.float()
            self.cov_trace = cov.diagonal(dim1=1, dim2=2).sum(1)
            self.norm = (self.cov_trace + mean.square().sum(1)).clamp_min(1e-12)

    def loss(self, feat: torch.Tensor) -> torch.Tensor:
        mean, gram = moments(feat)
        if self.kind == "gram":
            return (gram - self.gram).square().sum((1, 2)) / self.norm
        cov = gram - mean.unsqueeze(2) * mean.unsqueeze(1)
        mixed = self.cov_root @ cov @ self.cov_root
        w2 = (
            (mean - self.mean).square().sum(1)
            + cov.diagonal(dim1=1, dim2=2).sum(1)
            + self.cov_trace
            - 2 * trace_sqrt(mixed)
        )
        return w2 / self.norm


def trace_sqrt(mat: torch.Tensor, iterations: int = 12) -> torch.Tensor:
    """trace(sqrtm(mat)) for symmetric PSD matrices by Newton-Schulz: matmuls only, so it runs
    on the GPU without a host sync (an eigendecomposition would sync every step)."""
    eye = torch.eye(mat.shape[-1], device=mat.device, dtype=mat.dtype).expand_as(mat)
    norm = mat.square().sum((1, 2), keepdim=True).sqrt().clamp_min(1e-12)
    y, z = mat / norm, eye
    for _ in range(iterations):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return y.diagonal(dim1=1, dim2=2).sum(1) * norm.view(-1).sqrt()


def content_loss(feat: torch.Tensor, target: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return (feat.float() - target).square().mean((1, 2, 3)) / norm


def content_norm(target: torch.Tensor) -> torch.Tensor:
    return target.square().mean((1, 2, 3)).clamp_min(1e-12)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    dx = (image[..., :, 1:] - image[..., :, :-1]).square().mean((1, 2, 3))
    dy = (image[..., 1:, :] - image[..., :-1, :]).square().mean((1, 2, 3))
    return dx + dy
