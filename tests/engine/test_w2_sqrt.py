"""Both of the W2 loss's square roots held to one float64 reference: ``eigh`` (the CPU's) and
``newton`` (CUDA's matmul-only Newton-Schulz, run here on the CPU), at every pyramid scale,
batch 1 and 8, on layers with fewer positions than channels, and never NaN."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import (  # noqa: E402
    NewtonTraceSqrt,
    StyleTarget,
    TraceSqrt,
    moments,
    wasserstein2,
    wasserstein2_layers,
)
from workers.engine.vgg import load_vgg19  # noqa: E402
from workers.images import to_tensor  # noqa: E402

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
METHODS = ("eigh", "newton")
VALUE, COSINE = 1e-3, 0.999  # the bounds both paths are held to


@pytest.fixture(scope="module")
def net(weights_file):
    return load_vgg19(str(weights_file))[0].eval()


def batch(paths, side: int, flip: bool = False) -> torch.Tensor:
    out = []
    for path in paths:
        img = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        out.append(to_tensor(img))
    images = torch.stack(out)
    return torch.cat([images, images.flip(-1)]) if flip else images


def reference(feat: torch.Tensor, style: torch.Tensor) -> np.ndarray:
    """Relative squared W2 of each image's fitted Gaussian against its style's, from numpy's
    float64 eigendecompositions: (B,)."""

    def stats(f):
        x = f.flatten(1).T.double().numpy()
        mean = x.mean(0)
        return mean, (x - mean).T @ (x - mean) / len(x)

    values = []
    for f, s in zip(feat, style, strict=True):
        (m, c), (mt, ct) = stats(f), stats(s)
        evals, evecs = np.linalg.eigh(ct)
        root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
        mixed = np.linalg.eigvalsh(root @ c @ root)
        w2 = ((m - mt) ** 2).sum() + np.trace(c) + np.trace(ct)
        w2 -= 2 * np.sqrt(np.clip(mixed, 0, None)).sum()
        values.append(w2 / (np.trace(ct) + (mt**2).sum()))
    return np.array(values)


def grad_of(feat: torch.Tensor, target: StyleTarget) -> torch.Tensor:
    feat = feat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(wasserstein2(feat, target).sum(), feat)
    return grad.double()


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image."""
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("side", "count"),
    [
        (32, 1),
        pytest.param(64, 8, marks=pytest.mark.slow),
        (128, 1),
        pytest.param(128, 8, marks=pytest.mark.slow),
        (256, 1),
    ],
)
def test_value_and_gradient_against_float64(net, images, method, side, count):
    """fp32 features as a render has them; the reference is float64 throughout. relu4_1 below
    256 px and relu5_1 everywhere here have fewer positions than channels."""
    names = ["tubingen", "starry_night", "wave", "shipwreck"]
    contents = batch([images[n] for n in names], side, flip=True)[:count]
    styles = batch([images[n] for n in names[1:] + names[:1]], side, flip=True)[:count]
    with torch.no_grad():
        content, style = net(contents, set(LAYERS)), net(styles, set(LAYERS))
    for layer in LAYERS:
        stats = moments(style[layer], torch.float64)
        target = StyleTarget(*stats, "wasserstein", method)
        exact = StyleTarget(*stats, "wasserstein", "eigh")
        got = wasserstein2(content[layer], target).numpy()
        want = reference(content[layer], style[layer])
        assert np.isfinite(got).all() and (want > 0.01).all(), (layer, got, want)
        error = np.abs(got - want) / want
        assert error.max() <= VALUE, (method, layer, side, count, error.max())
        grad = grad_of(content[layer], target)
        assert torch.isfinite(grad).all()
        cosine = cosines(grad, grad_of(content[layer].double(), exact))
        assert float(cosine.min()) >= COSINE, (method, layer, side, count, cosine.min())


def test_the_layers_batched_by_size_equal_the_layers_alone(net, images):
    """wasserstein2_layers shares one root call per matrix size (relu4_1 and relu5_1 both 512
    at 256 px): the values are the layers' own."""
    contents = batch([images["tubingen"]], 256)
    styles = batch([images["wave"]], 256)
    with torch.no_grad():
        content, style = net(contents, set(LAYERS)), net(styles, set(LAYERS))
    targets = [
        StyleTarget(*moments(style[n], torch.float64), "wasserstein", "newton") for n in LAYERS
    ]
    together = wasserstein2_layers([content[n] for n in LAYERS], targets)
    for layer, target, value in zip(LAYERS, targets, together, strict=True):
        assert float(value) == pytest.approx(float(wasserstein2(content[layer], target)), 1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_zero_at_the_target_and_finite_on_a_blank_image(net, images, method):
    styles = batch([images["starry_night"]], 64)
    blank = torch.full_like(styles, 0.5)  # every feature constant: a zero covariance
    with torch.no_grad():
        style, flat = net(styles, set(LAYERS)), net(blank, set(LAYERS))
    for layer in LAYERS:
        target = StyleTarget(*moments(style[layer], torch.float64), "wasserstein", method)
        assert abs(float(wasserstein2(style[layer], target)[0])) <= 1e-4
        value = wasserstein2(flat[layer], target)
        assert torch.isfinite(value).all() and float(value[0]) > 0
        assert torch.isfinite(grad_of(flat[layer], target)).all()
        own = StyleTarget(*moments(flat[layer], torch.float64), "wasserstein", method)
        assert torch.isfinite(grad_of(flat[layer], own)).all()  # both covariances zero


def test_newton_trace_sqrt_on_a_rank_deficient_matrix():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 256, generator=gen, dtype=torch.float64)
    mat = x.transpose(1, 2) @ x / 40  # rank 40 of 256
    want = TraceSqrt.apply(mat)
    got = NewtonTraceSqrt.apply(mat.clone().requires_grad_(True), 35)
    assert torch.allclose(got.detach(), want, rtol=1e-6)
    xs = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(NewtonTraceSqrt.apply(xs.transpose(1, 2) @ xs / 40, 35).sum(), xs)
    ye = x.clone().requires_grad_(True)
    (ge,) = torch.autograd.grad(TraceSqrt.apply(ye.transpose(1, 2) @ ye / 40).sum(), ye)
    assert float(cosines(gx, ge).min()) >= 0.9999


def test_newton_without_enough_iterations_is_caught():
    """The bound can fail: 10 iterations leave small eigenvalues unconverged."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 300, 128, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, 128)
    mat = x.transpose(1, 2) @ x / 300
    want = float(TraceSqrt.apply(mat))
    assert abs(float(NewtonTraceSqrt.apply(mat, 10)) - want) > VALUE * want
    assert abs(float(NewtonTraceSqrt.apply(mat, 35)) - want) <= 1e-6 * want


def test_a_newton_render_is_finite_at_every_scale_and_close_to_eigh(weights_file, images):
    it = RenderItem(batch([images["tubingen"]], 48)[0], [(batch([images["wave"]], 48)[0], 1.0)])
    config = EngineConfig(start=16, ratio=1.7, iterations=4, style_loss="wasserstein", lr=0.05)
    results = {}
    for method in METHODS:
        engine = StyleEngine(str(weights_file), "cpu", w2_sqrt=method)
        results[method] = engine.render(it, config)  # relu5_1 is 1x1 at 16 px
        assert torch.isfinite(results[method].image).all()
    # Adam's steps turn the two roots' rounding (1e-6 of the loss) into a few grey levels at
    # flat pixels, as they do for batched against single W2 renders (tests/test_engine.py)
    difference = (results["eigh"].image - results["newton"].image).abs().mean()
    assert float(difference) < 3 / 255
    with pytest.raises(ValueError, match="w2_sqrt"):
        StyleEngine(str(weights_file), "cpu", w2_sqrt="svd")


def test_the_cpu_eigh_runs_on_one_thread_and_gives_the_threads_back(monkeypatch):
    """LAPACK's eigensolver stalls at its barriers when a core is shared (4-11 s steps beside
    one busy process on 2 cores): the CPU path runs it on one thread, and the rest of the step
    keeps the process's threads, an error included."""
    from workers.engine import losses

    seen, real = [], torch.linalg.eigh

    def recording(mat):
        seen.append(torch.get_num_threads())
        if mat.shape[-1] == 3:
            raise RuntimeError("linalg.eigh: the algorithm failed to converge")
        return real(mat)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(torch.linalg, "eigh", recording)
        a = torch.randn(4, 6, 9, dtype=torch.float64)
        a = a @ a.transpose(1, 2)
        values = losses.TraceSqrt.apply(a)
        assert torch.allclose(values, real(a)[0].clamp_min(0).sqrt().sum(-1))
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="converge"):
            losses.sqrtm_psd(torch.eye(3, dtype=torch.float64)[None])
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_fused_root_matches_autograd_and_refuses_what_it_cannot_do():
    """SandwichTraceSqrt against autograd through R @ C @ R and TraceSqrt, on a rank-deficient
    covariance; a root of batch 1 beside a batch of 3 is broadcast; a root that wants a
    gradient, or a Sandwich on the newton path, is refused rather than silently wrong."""
    from workers.engine.losses import Sandwich, SandwichTraceSqrt, sqrtm_psd, trace_sqrt_many

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 12, dtype=torch.float64, generator=gen)  # rank 4 of 12
    y = torch.randn(1, 40, 12, dtype=torch.float64, generator=gen)
    root = sqrtm_psd(y.transpose(1, 2) @ y / 40)
    cov = (x.transpose(1, 2) @ x / 4).requires_grad_(True)
    fused = SandwichTraceSqrt.apply(cov, root.expand_as(cov))
    (got,) = torch.autograd.grad(fused.sum(), cov)
    plain = TraceSqrt.apply(root @ cov @ root)
    (want,) = torch.autograd.grad(plain.sum(), cov)
    assert torch.allclose(fused, plain, rtol=1e-12) and torch.allclose(got, want, rtol=1e-9)
    other = cov.detach()[:1] * 2
    out = trace_sqrt_many([Sandwich(cov, root), Sandwich(other, root), root], "eigh")
    assert [tuple(o.shape) for o in out] == [(3,), (1,), (1,)]
    assert torch.allclose(out[0], plain) and torch.allclose(out[1], plain[:1] * 2**0.5)
    with pytest.raises(ValueError, match="constant"):
        SandwichTraceSqrt.apply(cov, root.expand_as(cov).clone().requires_grad_(True))
    with pytest.raises(ValueError, match="newton"):
        trace_sqrt_many([Sandwich(cov, root)], "newton")
