"""Style, content and smoothness losses. Whatever the network's precision (bf16 or fp32),
features are cast up before any statistic. Gram statistics and losses are stored and summed in
fp32; on CUDA their matrix products run on TF32 tensor cores (10-bit mantissa products, fp32
accumulation) while a render runs, see ``StyleEngine._device_flags``. The Wasserstein-2 loss
centres its features, forms what its square root needs in fp32 and float64 (see ``_mixed``; no
TF32: the engine turns it off for W2 and sliced renders), and takes tr sqrt with ``eigh`` on a
CPU or matmul-only Newton-Schulz on CUDA (``default_sqrt``), one call per matrix size.
Every loss is relative to its target's magnitude, so weights mean the same for any VGG weights
and any image size. Each returns one value per image in the batch."""

from __future__ import annotations

from typing import NamedTuple

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


SQRT_METHODS = ("eigh", "newton")
# Coupled Newton-Schulz iterations in float64. Measured on VGG features of real images at 32 to
# 256 px, rank-deficient layers included, against float64 eigh: 25 iterations were up to 1.9e-3
# off, 30 up to 4.5e-5 (gradient cosine >= 0.99988), 35 up to 2.4e-6 (>= 0.99996), 40 no
# closer in value and a little noisier in gradient (0.99991): rounding noise on a null
# eigenvalue grows 2.25x per iteration from 1e-16, and a negative one diverges once near 1.
NEWTON_ITERATIONS = 35


def default_sqrt(device: torch.device | str) -> str:
    """How the W2 loss takes its square root on ``device``: ``newton`` (matmuls only, no host
    read, capturable in a CUDA graph) on CUDA, where ``eigh`` syncs with the host on every call
    and loops over the batch; ``eigh`` elsewhere, where it is the cheaper of the two (a 512 x
    512 float64 eigh is 44 ms on one CPU core, 35 Newton-Schulz iterations 1.2 s)."""
    return "newton" if torch.device(device).type == "cuda" else "eigh"


class StyleTarget:
    """Blended target statistics of one layer, prepared once per scale. ``gram`` is the
    uncentred second moment; for ``wasserstein`` it is read together with ``mean``, and
    ``sqrt`` (``eigh`` or ``newton``) says how the per-step square root is taken. The target's
    own root is an eigendecomposition once per scale on either path."""

    def __init__(self, mean: torch.Tensor, gram: torch.Tensor, kind: str, sqrt: str = "eigh"):
        if sqrt not in SQRT_METHODS:
            raise ValueError(f"sqrt must be one of {SQRT_METHODS}, not {sqrt!r}")
        self.kind, self.sqrt = kind, sqrt
        self.mean, self.gram = mean.float(), gram.float()
        if kind == "gram":
            self.norm = self.gram.square().sum((1, 2)).clamp_min(1e-12)
        else:
            mean, gram = mean.double(), gram.double()
            cov = gram - mean.unsqueeze(2) * mean.unsqueeze(1)
            self.cov_root64 = sqrtm_psd(cov)
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
    |m - m_t|^2 + tr C + tr C_t - 2 tr sqrt(C_t^1/2 C C_t^1/2). One layer; see
    ``wasserstein2_layers`` for several, whose square roots share batched matmuls."""
    return wasserstein2_layers([feat], [target])[0]


def wasserstein2_layers(
    feats: list[torch.Tensor], targets: list[StyleTarget]
) -> list[torch.Tensor]:
    """W2 (float64, one value per image) of each layer against its target. The matrices whose
    square roots are needed are formed per layer (``_mixed``), then the roots of all layers of
    one size are taken together: one batched Newton-Schulz (or eigh) call per size instead of
    one per layer."""
    parts = [_mixed(f, t) for f, t in zip(feats, targets, strict=True)]
    methods = {t.sqrt for t in targets}
    if len(methods) != 1:
        raise ValueError("the layers of one loss take their square roots one way")
    roots = trace_sqrt_many([mixed for _, mixed, _ in parts], methods.pop())
    return [
        (rest - 2 * (root - lift)) / t.norm
        for (rest, _, lift), root, t in zip(parts, roots, targets, strict=True)
    ]


def _mixed(feat: torch.Tensor, target: StyleTarget):
    """(the terms without a square root, the matrix whose tr sqrt is wanted, what a lift of
    its null vector added to that tr sqrt), all float64.

    The features are centred first, so a rank-deficient covariance (fewer positions than
    channels, dead channels) keeps its zero eigenvalues at zero. With N positions and C
    channels, C_t^1/2 C C_t^1/2 = P^T P for P = X C_t^1/2 / sqrt(N); when N < C the N x N
    matrix P P^T has the same nonzero eigenvalues and is cheaper (relu5_1, and relu4_1 at
    small sizes): it is formed in float64 (N C^2 flops with N < C). Where N >= C:

    - ``eigh``: the covariance X^T X / N is an fp32 product over positions (no TF32 on CUDA),
      the products with the C x C root are float64. Measured against float64 throughout: the
      fp32 covariance costs at most 1e-6 relative, an fp32 sandwich 2.2e-3 and a gradient
      cosine of 0.994 (small eigenvalues feel it). eigh clamps the covariance's rounding noise
      (a few negative eigenvalues of 1e-7 relative).
    - ``newton``: P and P^T P are float64, so the matrix is PSD to float64 rounding. Newton-
      Schulz multiplies a negative eigenvalue by 2.25 per iteration; one of -1e-7 (fp32 noise)
      diverges within 35 iterations, one of -1e-16 does not.

    In the N x N form the centring puts the ones vector u in the null space exactly; Newton-
    Schulz takes it lifted (M + c u u^T, which adds sqrt(c) to the trace, subtracted after),
    so that no eigenvalue of exactly zero is left to multiply noise."""
    flat = _flat(feat)
    mean = flat.mean(1)
    centred = flat - mean.unsqueeze(1)
    count, channels = centred.shape[1], centred.shape[2]
    root = target.cov_root64
    lift = torch.zeros((), dtype=torch.float64, device=flat.device)
    if count < channels or target.sqrt == "newton":
        projected = (centred.double() @ root) / count**0.5
        if count < channels:
            mixed = projected @ projected.transpose(1, 2)
            if target.sqrt == "newton":
                scale = mixed.detach().square().sum((1, 2)).sqrt().clamp_min(1e-30)
                ones = torch.full((count,), count**-0.5, dtype=mixed.dtype, device=mixed.device)
                mixed = mixed + scale.view(-1, 1, 1) * torch.outer(ones, ones)
                lift = scale.sqrt()
        else:
            mixed = projected.transpose(1, 2) @ projected
    else:
        cov = torch.bmm(centred.transpose(1, 2), centred) / count
        mixed = Sandwich(cov.double(), root)  # R C R, formed inside its root's Function
    rest = (
        (mean.double() - target.mean64).square().sum(1)
        + (centred.square().sum((1, 2)) / count).double()
        + target.cov_trace
    )
    return rest, mixed, lift


class Sandwich(NamedTuple):
    """R C R for tr sqrt, left unformed: the eigh path forms it inside ``SandwichTraceSqrt``,
    whose gradient reaches C in two matmuls instead of three."""

    cov: torch.Tensor  # (B, C, C) float64, the render's covariance
    root: torch.Tensor  # (B, C, C) float64, the target's square root R

    @property
    def shape(self) -> torch.Size:
        return self.cov.shape


def trace_sqrt_many(mats: list[torch.Tensor | Sandwich], method: str) -> list[torch.Tensor]:
    """tr sqrt of each of several batches of symmetric PSD matrices, those of one size and
    form in one call (the five style layers' 64, 128, 256 and 512-channel matrices: four
    calls)."""
    by_size: dict[tuple[int, bool], list[int]] = {}
    for i, mat in enumerate(mats):
        by_size.setdefault((mat.shape[-1], isinstance(mat, Sandwich)), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(mats)
    for (_, sandwich), indices in by_size.items():
        if sandwich:
            if method != "eigh":
                raise ValueError("a Sandwich is the eigh path's form; newton takes matrices")
            parts: list[Sandwich] = [mats[i] for i in indices]  # type: ignore[misc]
            covs, roots = [p.cov for p in parts], [p.root.expand_as(p.cov) for p in parts]
            traces = SandwichTraceSqrt.apply(  # one layer of a size: no copies in the step
                torch.cat(covs) if len(parts) > 1 else covs[0],
                torch.cat(roots) if len(parts) > 1 else roots[0],
            )
        else:
            group = torch.cat([mats[i] for i in indices]) if len(indices) > 1 else mats[indices[0]]
            traces = (
                TraceSqrt.apply(group)
                if method == "eigh"
                else NewtonTraceSqrt.apply(group, NEWTON_ITERATIONS)
            )
        for i, part in zip(indices, traces.split([mats[i].shape[0] for i in indices]), strict=True):
            out[i] = part
    return out  # type: ignore[return-value]


def eigh(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``, on a CPU with one thread. LAPACK's symmetric eigensolver runs
    many small parallel regions, and each waits at a barrier for all of its threads: when
    another process holds a core, a descheduled thread stalls every one of them. Measured on
    this project's 2-core machine (the five style layers' float64 eigh of one 256 px step,
    bench/results/eigh-threads-2core.json): beside one busy process, median 144 ms and at
    worst 548 ms with two threads, 45 and 71 ms with one; idle, 22 ms with two and 30 with
    one. The rest of the step keeps every thread the process was given."""
    if mat.device.type != "cpu" or (threads := torch.get_num_threads()) == 1:
        return torch.linalg.eigh(mat)
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(mat)
    finally:
        torch.set_num_threads(threads)


def sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of PSD matrices (float64 eigendecomposition)."""
    evals, evecs = eigh(mat.double())
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(1)) @ evecs.transpose(1, 2)


def _spectrum(mat: torch.Tensor):
    """(eigenvalues, eigenvectors, which eigenvalues count, tr sqrt) of symmetric PSD ``mat``
    (float64), symmetrised first; eigenvalues at or below 1e-12 of the largest count as zero."""
    evals, evecs = eigh(0.5 * (mat + mat.transpose(-1, -2)))
    kept = evals > evals[..., -1:].clamp_min(1e-300) * 1e-12
    return evals, evecs, kept, torch.where(kept, evals, 0).sqrt().sum(-1)


def _half_inv_root(evals: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """1 / (2 sqrt(l)) of each kept eigenvalue, 0 for the others: d tr sqrt / d l."""
    return torch.where(kept, 0.5 / evals.clamp_min(1e-300).sqrt(), 0)


class TraceSqrt(torch.autograd.Function):
    """tr sqrt(A) of symmetric PSD matrices (B, C, C): the sum of the square roots of A's
    eigenvalues (float64 ``eigh``), with the gradient A^-1/2 / 2 built from the same
    eigenvectors. Eigenvalues at or below 1e-12 of the largest are rounding noise of a
    rank-deficient A: they count as zero, in value and gradient. The gradient that reaches the
    features stays bounded however small an eigenvalue is (for a direction v with eigenvalue
    l, the features move by X C_t^1/2 v, of size sqrt(l), times 1/sqrt(l)). The CPU's path:
    on CUDA, eigh reads a value back to the host on every call and cannot be captured."""

    @staticmethod
    def forward(ctx, mat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        evals, evecs, kept, trace = _spectrum(mat.double())
        ctx.save_for_backward(evecs.to(mat.dtype), evals, kept)
        return trace.to(mat.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        evecs, evals, kept = ctx.saved_tensors
        half_inv = _half_inv_root(evals, kept).to(evecs.dtype)
        out = (evecs * half_inv.unsqueeze(-2)) @ evecs.transpose(-1, -2)
        return grad.to(out.dtype).view(-1, 1, 1) * out


class SandwichTraceSqrt(torch.autograd.Function):
    """tr sqrt(R C R) for symmetric PSD C and a constant symmetric R (B, C, C; float64), by
    ``eigh`` of M = R C R = U L U^T. Its gradient with respect to C is R M^-1/2 R / 2 =
    Q diag(L^-1/2 / 2) Q^T with Q = R U: two matmuls, where autograd through ``R @ C @ R``
    and ``TraceSqrt`` takes three (U diag U^T, then R on each side). At 256 px the 512-channel
    layer's saved matmul is about as costly as its eigh. The eigenvalue floor is TraceSqrt's."""

    @staticmethod
    def forward(ctx, cov: torch.Tensor, root: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if ctx.needs_input_grad[1]:
            raise ValueError("the target's root is a constant here: no gradient reaches it")
        evals, evecs, kept, trace = _spectrum(root @ cov @ root)
        ctx.save_for_backward(root, evecs, evals, kept)
        return trace

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        root, evecs, evals, kept = ctx.saved_tensors
        half_inv = _half_inv_root(evals, kept)
        q = root @ evecs
        out = (q * half_inv.unsqueeze(-2)) @ q.transpose(-1, -2)
        return grad.to(out.dtype).view(-1, 1, 1) * out, None


class NewtonTraceSqrt(torch.autograd.Function):
    """tr sqrt(A) of symmetric PSD matrices (B, K, K) by coupled Newton-Schulz in float64:
    Y -> (A/s)^1/2 and Z -> (A/s)^-1/2 with s = |A|_F, three matmuls per iteration, a fixed
    count of them, so nothing reads a value back to the host and a CUDA graph can hold it. The
    gradient is taken analytically, A^-1/2 / 2 = Z / (2 sqrt s), not by backpropagating
    through the iterations (which would keep every iterate and double the matmuls).

    An eigenvalue l of A/s is reached after about log(1/l)/log(2.25) iterations; smaller ones
    contribute less than their exact sqrt(l) to the trace, and their gradient is bounded the
    same way eigh's is. fp32 iterates diverge (noise makes small eigenvalues negative), hence
    float64 throughout."""

    @staticmethod
    def forward(ctx, mat: torch.Tensor, iterations: int) -> torch.Tensor:  # type: ignore[override]
        sym = 0.5 * (mat + mat.transpose(-1, -2)).double()
        scale = sym.square().sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-30)
        eye = torch.eye(sym.shape[-1], dtype=sym.dtype, device=sym.device)
        y, z = sym / scale, eye.expand_as(sym)
        for _ in range(iterations):
            t = 1.5 * eye - 0.5 * (z @ y)
            y, z = y @ t, t @ z
        root_scale = scale.sqrt()
        grad = (z + z.transpose(-1, -2)) / (4 * root_scale)  # (Z + Z^T)/2 / (2 sqrt s)
        ctx.save_for_backward(grad)
        return (y.diagonal(dim1=-2, dim2=-1).sum(-1) * root_scale[..., 0, 0]).to(mat.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (half_inv_root,) = ctx.saved_tensors
        return grad.to(half_inv_root.dtype).view(-1, 1, 1) * half_inv_root, None


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
