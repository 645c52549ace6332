"""Style, content and smoothness losses. Whatever the network's precision (bf16 or fp32),
features are cast up before any statistic. Gram statistics and losses are stored and summed in
fp32; on CUDA their matrix products run on TF32 tensor cores (10-bit mantissa products, fp32
accumulation) while a render runs, see ``StyleEngine._device_flags``. The Wasserstein-2 loss
centres its features and forms its products in fp32 (no TF32: the engine turns it off for W2
and sliced renders), and decomposes only the small C x C (or N x N) matrix in float64 (see
``wasserstein2`` and ``TraceSqrt``).
Every loss is relative to its target's magnitude, so weights mean the same for any VGG weights
and any image size. Each returns one value per image in the batch."""

from __future__ import annotations

import torch


def _flat(feat: torch.Tensor) -> torch.Tensor:
    """Features as (B, HW, C), at least fp32, without a copy beyond the cast for channels_last
    input."""
    dtype = torch.promote_types(feat.dtype, torch.float32)
    if feat.is_contiguous(memory_format=torch.channels_last) and feat.dim() == 4:
        return feat.permute(0, 2, 3, 1).reshape(feat.shape[0], -1, feat.shape[1]).to(dtype)
    return feat.flatten(2).transpose(1, 2).to(dtype)


def moments(
    feat: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image channel mean (B, C) and uncentred second moment (Gram, B x C x C)."""
    flat = _flat(feat).to(dtype)
    count = flat.shape[1]
    return flat.mean(1), torch.bmm(flat.transpose(1, 2), flat) / count


class StyleTarget:
    """Blended target statistics of one layer, prepared once per scale. ``gram`` is the
    uncentred second moment; for ``wasserstein`` it is read together with ``mean``."""

    def __init__(self, mean: torch.Tensor, gram: torch.Tensor, kind: str):
        self.kind = kind
        self.mean, self.gram = mean.float(), gram.float()
        if kind == "gram":
            self.norm = self.gram.square().sum((1, 2)).clamp_min(1e-12)
        else:
            mean, gram = mean.double(), gram.double()
            cov = gram - mean.unsqueeze(2) * mean.unsqueeze(1)
            self.cov_root64 = sqrtm_psd(cov)
            self.cov_root = self.cov_root64.float()
            self.mean64 = mean
            self.cov_trace = cov.diagonal(dim1=1, dim2=2).sum(1)
            self.norm = (self.cov_trace + mean.square().sum(1)).clamp_min(1e-12)

    def loss(self, feat: torch.Tensor) -> torch.Tensor:
        if self.kind == "gram":
            _, gram = moments(feat)
            return (gram - self.gram).square().sum((1, 2)) / self.norm
        return wasserstein2(feat, self).float()


def wasserstein2(feat: torch.Tensor, target: StyleTarget) -> torch.Tensor:
    """Squared W2 between the Gaussians fitted to ``feat`` and to the target, relative to the
    target's second moment:
    |m - m_t|^2 + tr C + tr C_t - 2 tr sqrt(C_t^1/2 C C_t^1/2).

    The features are centred before any product, so a rank-deficient covariance (fewer
    positions than channels, dead channels) keeps its zero eigenvalues at zero, and the
    products over positions run in fp32 (float64 features stay float64) without losing what
    the loss needs: tests/test_w2.py holds them to float64. Only the eigendecomposition and
    the sum of the terms, whose difference is small near the target, are float64. With N
    positions and C channels, C_t^1/2 C C_t^1/2 = Y^T Y / N for Y = X C_t^1/2; when N < C
    the N x N matrix Y Y^T / N has the same nonzero eigenvalues and is cheaper to form and
    to decompose (relu5_1, and relu4_1 at small sizes). On CUDA the engine runs a W2 render
    without TF32 matmuls (``StyleEngine._device_flags``), forward and backward: TF32's 10-bit
    mantissa would put noise into the small eigenvalues."""
    flat = _flat(feat)
    mean = flat.mean(1)
    centred = flat - mean.unsqueeze(1)
    count, channels = centred.shape[1], centred.shape[2]
    root = target.cov_root64 if flat.dtype == torch.float64 else target.cov_root
    if count < channels:
        projected = centred @ root
        mixed = projected @ projected.transpose(1, 2) / count
    else:
        cov = torch.bmm(centred.transpose(1, 2), centred) / count
        mixed = root @ cov @ root
    w2 = (
        (mean.double() - target.mean64).square().sum(1)
        + (centred.square().sum((1, 2)) / count).double()
        + target.cov_trace
        - 2 * TraceSqrt.apply(mixed).double()
    )
    return w2 / target.norm


def sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of PSD matrices (float64 eigendecomposition)."""
    evals, evecs = torch.linalg.eigh(mat.double())
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(1)) @ evecs.transpose(1, 2)


class TraceSqrt(torch.autograd.Function):
    """tr sqrt(A) of symmetric PSD matrices (B, C, C): the sum of the square roots of A's
    eigenvalues (float64 ``eigh``), with the gradient A^-1/2 / 2 built from the same
    eigenvectors. Eigenvalues at or below 1e-12 of the largest are rounding noise of a
    rank-deficient A: they count as zero, in value and gradient. The gradient that reaches the
    features stays bounded however small an eigenvalue is (for a direction v with eigenvalue
    l, the features move by X C_t^1/2 v, of size sqrt(l), times 1/sqrt(l)).

    Newton-Schulz, which this replaces, came out 3-9 % low at 12 iterations and diverged at
    30 on rank-deficient covariances; an eigendecomposition is exact to float64 rounding and,
    on a CPU, cheaper than 12 iterations of 512x512 matmuls with autograd through them."""

    @staticmethod
    def forward(ctx, mat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sym = 0.5 * (mat + mat.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(sym.double())
        floor = evals[..., -1:].clamp_min(1e-300) * 1e-12
        kept = evals > floor
        ctx.save_for_backward(evecs.to(mat.dtype), evals, kept)
        return torch.where(kept, evals, 0).sqrt().sum(-1).to(mat.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        evecs, evals, kept = ctx.saved_tensors
        half_inv = torch.where(kept, 0.5 / evals.clamp_min(1e-300).sqrt(), 0).to(evecs.dtype)
        out = (evecs * half_inv.unsqueeze(-2)) @ evecs.transpose(-1, -2)
        return grad.to(out.dtype).view(-1, 1, 1) * out


MAX_SAMPLES = 16384  # style positions kept per image and layer for the sliced loss
STEP_POSITIONS = 4096  # render positions compared per step and layer (a fresh random subset)
DIRECTION_SETS = 8  # seeded sets of directions per layer and scale, one drawn per step


class SlicedTarget:
    """The sliced Wasserstein-2 style loss (Heitz et al., CVPR 2021) of one layer: the whole
    distribution of the style's features, not only its first two moments. Each step projects
    the render's features on a set of random unit directions (as many as there are channels),
    sorts them, and compares them quantile by quantile with the style's on the same directions.
    A blend of styles is the Wasserstein barycentre along each direction: the weighted mean of
    their quantile functions. Relative to the style's second moment, like the other losses; no
    threshold, so it means the same for trained and random weights.

    Sorting was 43 % of a step when every step drew new directions and sorted the style's
    16,384 samples and every render position again. Now the directions come from a pool of
    DIRECTION_SETS seeded sets whose style quantiles are computed once per scale, and a step
    sorts at most STEP_POSITIONS random positions of the render (their quantiles estimate the
    whole image's; over steps every position is reached)."""

    kind = "sliced"

    def __init__(
        self,
        samples: list[list[tuple[torch.Tensor, float]]],
        generator: torch.Generator,
    ):
        self.samples = samples  # per render: (positions, C) features of each style, weight
        self.generator = generator
        self.norm = torch.stack(
            [sum(w * f.square().sum(1).mean() for f, w in item) for item in samples]
        ).clamp_min(1e-12)
        self._pool: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _prepared(self, count: int, channels: int, like: torch.Tensor):
        """(directions (S, C, C), the style's quantiles (S, B, count, C)) for ``count`` levels."""
        if self._pool is None or self._pool[0] != count:
            sets = torch.randn(
                DIRECTION_SETS,
                channels,
                channels,
                generator=self.generator,
                device=like.device,
                dtype=like.dtype,
            )
            sets = sets / sets.norm(dim=1, keepdim=True)
            at = (torch.arange(count, device=like.device, dtype=like.dtype) + 0.5) / count
            theirs = torch.stack(
                [
                    torch.stack(
                        [sum(w * _quantiles(f @ d, at) for f, w in item) for item in self.samples]
                    )
                    for d in sets
                ]
            )
            self._pool = (count, sets, theirs)
        return self._pool[1], self._pool[2]

    def loss(self, feat: torch.Tensor) -> torch.Tensor:
        flat = _flat(feat)  # (B, N, C)
        count, channels = flat.shape[1], flat.shape[2]
        if count > STEP_POSITIONS:
            keep = torch.randperm(count, generator=self.generator, device=flat.device)
            flat, count = flat[:, keep[:STEP_POSITIONS]], STEP_POSITIONS
        sets, theirs = self._prepared(count, channels, flat)
        pick = torch.randint(DIRECTION_SETS, (1,), generator=self.generator, device=flat.device)
        ours = (flat @ sets[pick][0]).sort(dim=1).values  # (B, count, C)
        return (ours - theirs[pick][0]).square().mean((1, 2)) * channels / self.norm


def _quantiles(projected: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Values of each column of ``projected`` (M, K) at the quantile levels ``at`` (N,), by
    linear interpolation between order statistics: (N, K)."""
    ordered = projected.sort(dim=0).values
    position = (at * ordered.shape[0] - 0.5).clamp(0, ordered.shape[0] - 1)
    low = position.floor().long()
    high = (low + 1).clamp_max(ordered.shape[0] - 1)
    frac = (position - low).unsqueeze(1)
    return ordered[low] * (1 - frac) + ordered[high] * frac


def style_samples(feat: torch.Tensor) -> torch.Tensor:
    """A style image's features at one layer as (positions, C) fp32, at most MAX_SAMPLES of
    them (a random subset: quantiles of a 16,384-sample are within about 1 % of the whole)."""
    flat = _flat(feat)[0]
    if flat.shape[0] <= MAX_SAMPLES:
        return flat
    generator = torch.Generator().manual_seed(0)  # the same subset on every device
    keep = torch.randperm(flat.shape[0], generator=generator)[:MAX_SAMPLES]
    return flat[keep.to(flat.device)]


def content_loss(feat: torch.Tensor, target: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return (feat.float() - target).square().mean((1, 2, 3)) / norm


def content_norm(target: torch.Tensor) -> torch.Tensor:
    return target.square().mean((1, 2, 3)).clamp_min(1e-12)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    dx = (image[..., :, 1:] - image[..., :, :-1]).square().mean((1, 2, 3))
    dy = (image[..., 1:, :] - image[..., :-1, :]).square().mean((1, 2, 3))
    return dx + dy
