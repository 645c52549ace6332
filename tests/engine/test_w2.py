"""The Wasserstein-2 style loss behind every preset, checked on VGG features of real images:
its value against an independent float64 eigendecomposition (also on rank-deficient
covariances), zero at the target, a gradient that matches finite differences, and finite values
at every scale and in bf16."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import StyleTarget, TraceSqrt, moments, wasserstein2  # noqa: E402
from workers.engine.vgg import load_vgg19  # noqa: E402
from workers.images import to_tensor  # noqa: E402

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.fixture(scope="module")
def net(weights_file):
    return load_vgg19(str(weights_file))[0].eval()


def picture(path, side: int) -> torch.Tensor:
    img = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    return to_tensor(img)[None]


def features(net, path, side: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return net(picture(path, side), set(LAYERS))


def target_of(feat: torch.Tensor) -> StyleTarget:
    mean, gram = moments(feat, torch.float64)
    return StyleTarget(mean, gram, "wasserstein")


def reference_w2(feat: torch.Tensor, style: torch.Tensor) -> float:
    """Squared W2 of the fitted Gaussians, relative, from numpy's float64 eigendecomposition."""

    def stats(f):
        x = f[0].flatten(1).T.double().numpy()
        mean = x.mean(0)
        return mean, (x - mean).T @ (x - mean) / len(x)

    (m, c), (mt, ct) = stats(feat), stats(style)
    evals, evecs = np.linalg.eigh(ct)
    root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    mixed = np.linalg.eigvalsh(root @ c @ root)
    w2 = ((m - mt) ** 2).sum() + np.trace(c) + np.trace(ct)
    w2 -= 2 * np.sqrt(np.clip(mixed, 0, None)).sum()
    return w2 / (np.trace(ct) + (mt**2).sum())


# fp32 features take an fp32 covariance over positions and float64 products with the target's
# root (measured: at most 8e-6 relative; an fp32 sandwich was 2.2e-3 on relu1_1 at 256 px);
# float64 features stay float64. tests/test_w2_sqrt.py holds both square roots to this too.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", [32, 64, 128, 256])
def test_value_matches_a_float64_eigendecomposition(net, images, side, dtype):
    content = features(net, images["tubingen"], side)
    style = features(net, images["starry_night"], side)
    for layer in LAYERS:
        positions = content[layer].shape[-1] * content[layer].shape[-2]
        got = float(wasserstein2(content[layer].to(dtype), target_of(style[layer]))[0])
        want = reference_w2(content[layer], style[layer])
        assert want > 0.01, (layer, side)
        # relu4_1 and relu5_1 below 256 px have fewer positions than channels: rank-deficient
        assert abs(got - want) <= TOLERANCE[dtype] * want, (layer, side, positions, got, want)


@pytest.mark.parametrize("side", [16, 64, 128])
def test_zero_at_the_target(net, images, side):
    style = features(net, images["starry_night"], side)
    for layer in LAYERS:
        exact = wasserstein2(style[layer].double(), target_of(style[layer]))
        assert abs(float(exact[0])) <= 1e-6
        # fp32: within 1e-3 of zero (measured at most 5e-4), against 0.05-0.1 between images
        assert abs(float(wasserstein2(style[layer], target_of(style[layer]))[0])) <= 1e-3


@pytest.mark.parametrize("side", [64, 256])
def test_fp32_gradient_points_where_the_float64_one_does(net, images, side):
    """What Adam follows: the fp32 loss's gradient against float64's, per layer. With float64
    products around the target's root: cosine 1.00000 at worst (an fp32 sandwich gave 0.994 on
    relu5_1 at 256 px and 0.9985 on relu1_1)."""
    content = features(net, images["tubingen"], side)
    style = features(net, images["starry_night"], side)
    for layer in LAYERS:
        target = target_of(style[layer])
        grads = []
        for dtype in (torch.float32, torch.float64):
            feat = content[layer].to(dtype).requires_grad_(True)
            (grad,) = torch.autograd.grad(wasserstein2(feat, target).sum(), feat)
            grads.append(grad.double().flatten())
        cosine = float(torch.nn.functional.cosine_similarity(*grads, dim=0))
        relative = float((grads[0] - grads[1]).norm() / grads[1].norm())
        assert cosine >= 0.999 and relative <= 0.02, (layer, side, cosine, relative)


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    for channels, side in ((16, 3), (6, 5)):  # 9 positions for 16 channels (rank-deficient)
        style = torch.relu(torch.randn(1, channels, side + 1, side + 1, generator=gen)).double()
        feat = torch.rand(1, channels, side, side, generator=gen, dtype=torch.float64)
        target = target_of(style)
        assert torch.autograd.gradcheck(
            lambda f, t=target: wasserstein2(f, t), (feat.requires_grad_(True),), atol=1e-6
        )


def test_trace_sqrt_of_a_rank_deficient_matrix_and_its_bounded_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 512, generator=gen, dtype=torch.float64)
    mat = (x.transpose(1, 2) @ x / 40).requires_grad_(True)  # rank 40 of 512
    value = TraceSqrt.apply(mat)
    want = np.sqrt(np.clip(np.linalg.eigvalsh(mat.detach()[0].numpy()), 0, None)).sum()
    assert abs(float(value.detach()) - want) <= 1e-6 * want  # numpy keeps rounding noise
    (grad,) = torch.autograd.grad(value, mat)
    assert torch.isfinite(grad).all()
    # through the samples the gradient is bounded: d tr sqrt(X^T X / n) / dX has norm sqrt(rank/n)
    xs = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(TraceSqrt.apply(xs.transpose(1, 2) @ xs / 40), xs)
    assert float(gx.norm()) == pytest.approx(1.0, rel=1e-6)


def test_high_renders_finite_at_every_scale_and_in_bf16(weights_file, images):
    it = RenderItem(picture(images["tubingen"], 48)[0], [(picture(images["wave"], 48)[0], 1.0)])
    config = EngineConfig(start=16, ratio=1.7, iterations=4, style_loss="wasserstein", lr=0.05)
    for precision in ("fp32", "bf16"):
        engine = StyleEngine(str(weights_file), "cpu", precision=precision)
        result = engine.render(it, config)  # relu5_1 is 1x1 at 16 px
        assert [s for s, _ in result.schedule] == [16, 27, 48]
        assert torch.isfinite(result.image).all()
        assert all(np.isfinite(v) for v in result.losses.values()), result.losses


def test_sliced_loss_is_zero_at_the_style_and_renders_deterministically(net, weights_file, images):
    from workers.engine.losses import SlicedTarget, style_samples

    style = features(net, images["starry_night"], 64)
    content = features(net, images["tubingen"], 64)
    gen = torch.Generator().manual_seed(0)
    for layer in LAYERS:
        target = SlicedTarget([[(style_samples(style[layer]), 1.0)]], gen)
        assert float(target.loss(style[layer])[0]) <= 1e-6
        assert float(target.loss(content[layer])[0]) > 1e-3
    half = SlicedTarget([[(style_samples(style["relu3_1"]), 0.5)] * 2], gen)  # a blend of one
    assert float(half.loss(style["relu3_1"])[0]) <= 1e-6

    it = RenderItem(picture(images["tubingen"], 48)[0], [(picture(images["wave"], 48)[0], 1.0)])
    config = EngineConfig(start=24, ratio=2, iterations=15, style_loss="sliced")
    engine = StyleEngine(str(weights_file), "cpu")
    first, again = engine.render(it, config), engine.render(it, config)
    assert torch.equal(first.image, again.image)  # its random directions follow the seed
    before = engine.evaluate(it.content[None], [it], config)[0]["style"]
    assert first.losses["style"] < 0.5 * before
    with pytest.raises(ValueError, match="sliced style loss needs adam"):
        EngineConfig(style_loss="sliced", optimizer="lbfgs", ema=0.0)
