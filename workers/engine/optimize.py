"""The optimisation: pixels fitted coarse to fine over an image pyramid, several renders of the
same size at once.

Per scale, content and style targets are computed once. Inside the iteration loop nothing asks
the device for a value (no ``.item()``), so a GPU never waits on the host; losses are read once
per scale. Adam's moments and the iterate average are resized with the image between scales.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workers.engine import color
from workers.engine.config import EngineConfig
from workers.engine.losses import (
    SQRT_METHODS,
    SlicedTarget,
    StyleTarget,
    content_loss,
    content_norm,
    default_sqrt,
    moments,
    style_samples,
    tv_loss,
    wasserstein2_layers,
)
from workers.engine.vgg import VGG19Features, load_vgg19

Progress = Callable[[int, int, int, int], None]  # scale index, scales, iteration, iterations
BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class RenderItem:
    """One render: the content already at its output size, and its styles with blend weights."""

    content: torch.Tensor  # (3, H, W) in [0, 1]
    styles: list[tuple[torch.Tensor, float]]  # (3, h, w) in [0, 1], weight
    seed: int = 0
    # (1, H, W) in [0, 1]: how much of the content each pixel keeps (a feathered protection
    # mask times its strength; 1 keeps the photo's pixel exactly), or None
    protect: torch.Tensor | None = None


@dataclass
class RenderResult:
    image: torch.Tensor  # (3, H, W) in [0, 1], on the CPU
    losses: dict[str, float]
    schedule: list[tuple[int, int]]
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class _Targets:
    content: torch.Tensor
    content_norm: torch.Tensor
    styles: dict[str, StyleTarget | SlicedTarget]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    down = size[0] < image.shape[-2]
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=down)


def scale_dims(height: int, width: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class StyleEngine:
    """Holds the network on one device; renders are independent calls."""

    def __init__(
        self,
        weights: str = "imagenet",
        device: str | torch.device = "auto",
        precision: str = "auto",
        net: VGG19Features | None = None,
        weights_id: str | None = None,
        cuda_graphs: bool = True,
        w2_sqrt: str = "auto",
    ):
        self.device = resolve_device(device)
        self.cuda_graphs = cuda_graphs
        # how the W2 loss takes its per-step square root: by device (losses.default_sqrt), or
        # forced (tests run the CUDA path's matmul-only root on the CPU)
        self.w2_sqrt = default_sqrt(self.device) if w2_sqrt == "auto" else w2_sqrt
        if self.w2_sqrt not in SQRT_METHODS:
            raise ValueError(f"w2_sqrt must be auto or one of {SQRT_METHODS}, not {w2_sqrt!r}")
        if net is None:
            net, weights_id = load_vgg19(weights)
        self.weights_id = weights_id or "unknown"
        cuda = self.device.type == "cuda"
        if precision == "auto":
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.precision = precision
        # bf16: the network's weights are cast once (what autocast would redo every step); the
        # input is cast on entry; statistics and losses are computed in fp32.
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        # L-BFGS needs an objective without bf16 noise (its line search stopped after 94 of
        # 154 evaluations in bf16): keep the fp32 weights to build an fp32 network for it.
        self._fp32_state = (
            {k: v.detach().clone() for k, v in net.state_dict().items()}
            if precision == "bf16"
            else None
        )
        self._net_fp32: VGG19Features | None = None
        net = net.to(self.device)
        net.convs.to(dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        self.net = net.to(memory_format=self.memory_format)
        self._shapes_seen: set[tuple[int, ...]] = set()
        # the sliced loss's random directions, made when a sliced render asks for them (a
        # device generator is the one thing here that needs a real device)
        self._generator: torch.Generator | None = None

    @contextlib.contextmanager
    def _device_flags(self, shape: tuple[int, ...], tf32_matmul: bool = True):
        """TF32 convolutions on CUDA, TF32 matmuls where the loss allows them (the Gram loss;
        not W2 or sliced, whose forward and backward products feed small eigenvalues and
        sorted quantiles), and cuDNN autotuning for a shape seen before (tuning a shape met
        once costs more than it saves, and exact channel sizes bring many shapes), for the
        length of one render only: the process's own settings are restored.
        """
        if self.device.type != "cuda":
            yield
            return
        backends = torch.backends
        saved = (
            backends.cuda.matmul.allow_tf32,
            backends.cudnn.allow_tf32,
            backends.cudnn.benchmark,
        )
        backends.cudnn.allow_tf32 = True
        backends.cuda.matmul.allow_tf32 = tf32_matmul
        backends.cudnn.benchmark = shape in self._shapes_seen
        self._shapes_seen.add(shape)
        try:
            yield
        finally:
            (
                backends.cuda.matmul.allow_tf32,
                backends.cudnn.allow_tf32,
                backends.cudnn.benchmark,
            ) = saved

    @property
    def device_name(self) -> str:
        """The device type, as cost is accounted: ``cpu`` or ``cuda:<card name>``."""
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return self.device.type

    # -- public API -----------------------------------------------------------------------

    def render(
        self, item: RenderItem, config: EngineConfig, progress: Progress | None = None
    ) -> RenderResult:
        return self.render_batch([item], config, progress)[0]

    def render_batch(
        self, items: list[RenderItem], config: EngineConfig, progress: Progress | None = None
    ) -> list[RenderResult]:
        """Optimise several renders together. Each keeps its own loss, so the result is the
        same as rendering it alone (L-BFGS couples a batch, so it renders one at a time)."""
        if not items:
            return []
        shapes = {tuple(item.content.shape) for item in items}
        if len(shapes) != 1:
            raise ValueError(f"a batch needs contents of one shape, got {sorted(shapes)}")
        if config.optimizer == "lbfgs" and len(items) > 1:
            return [r for item in items for r in self.render_batch([item], config, progress)]
        lbfgs = config.optimizer == "lbfgs"
        with (
            self._device_flags((len(items), *items[0].content.shape), config.style_loss == "gram"),
            self._fp32_network() if lbfgs else contextlib.nullcontext(),
        ):
            return self._render_batch(items, config, progress)

    def _render_batch(
        self, items: list[RenderItem], config: EngineConfig, progress: Progress | None
    ) -> list[RenderResult]:
        started = time.perf_counter()
        if config.style_loss == "sliced":  # its random directions: one seed, one render
            self._generator = torch.Generator(self.device).manual_seed(items[0].seed)
        height, width = items[0].content.shape[-2:]
        schedule = config.schedule(max(height, width))
        contents = torch.stack([item.content for item in items]).float().to(self.device)
        guide = color.luminance(contents) if config.color == "luminance" else contents
        styles = [self._prepare_styles(item, config) for item in items]
        protect = None
        if any(item.protect is not None for item in items):
            blank = torch.zeros(1, height, width)
            protect = torch.stack(
                [blank if item.protect is None else item.protect.float() for item in items]
            ).to(self.device)

        x = m = v = avg = None
        step = torch.zeros((), device=self.device)  # Adam's step count, kept on the device
        for index, (long_side, iterations) in enumerate(schedule):
            dims = scale_dims(height, width, long_side)
            targets = self._targets(guide, styles, config, dims, long_side)
            if x is None:
                x = self._init(items, styles, guide, config, dims)
            else:
                x = _resize(x, dims).clamp_(0, 1)
                m = _resize(m, dims) if m is not None else None
                v = _resize(v, dims).clamp_(min=0) if v is not None else None
                avg = _resize(avg, dims).clamp_(0, 1) if avg is not None else None
            x = x.contiguous(memory_format=self.memory_format)
            pin = None
            if protect is not None:  # protected pixels are held at the content every step
                keep = _resize(protect, dims).clamp(0, 1)
                pin = (1 - keep, _resize(guide, dims).clamp(0, 1) * keep)
                x.mul_(pin[0]).add_(pin[1])
            if config.optimizer == "adam":
                if m is None or v is None:
                    m, v = torch.zeros_like(x), torch.zeros_like(x)
                m = m.contiguous(memory_format=self.memory_format)
                v = v.contiguous(memory_format=self.memory_format)
                if config.ema and avg is None:
                    avg = x.clone()
                report = (
                    (lambda i, n, k=index: progress(k, len(schedule), i, n)) if progress else None
                )
                self._adam(x, m, v, avg, step, targets, config, iterations, report, pin)
            else:
                self._lbfgs(x, targets, config, iterations)
                if pin is not None:
                    x.mul_(pin[0]).add_(pin[1])
                if progress:
                    progress(index, len(schedule), iterations, iterations)
        assert x is not None
        final = avg if avg is not None else x
        if protect is not None:  # exactly the photo where fully protected
            final = final * (1 - protect) + guide * protect
        with torch.no_grad():
            losses = self._objective(final, targets, config)
            values = {k: t.float().cpu().tolist() for k, t in losses.items()}
        if config.color == "luminance":
            final = color.recombine(final, contents)
        images = final.float().clamp(0, 1).cpu().contiguous()
        seconds = (time.perf_counter() - started) / len(items)
        return [
            RenderResult(images[i], {k: vals[i] for k, vals in values.items()}, schedule, seconds)
            for i in range(len(items))
        ]

    def evaluate(
        self, images: torch.Tensor, items: list[RenderItem], config: EngineConfig
    ) -> list[dict[str, float]]:
        """The objective of finished images (B, 3, H, W) at their size: for comparing methods."""
        height, width = images.shape[-2:]
        contents = torch.stack([item.content for item in items]).float().to(self.device)
        contents = _resize(contents, (height, width))
        guide = color.luminance(contents) if config.color == "luminance" else contents
        styles = [self._prepare_styles(item, config) for item in items]
        targets = self._targets(guide, styles, config, (height, width), max(height, width))
        x = images.float().to(self.device).contiguous(memory_format=self.memory_format)
        with torch.no_grad():
            losses = self._objective(x, targets, config)
        values = {k: t.cpu().tolist() for k, t in losses.items()}
        return [{k: vals[i] for k, vals in values.items()} for i in range(len(items))]

    # -- pieces ---------------------------------------------------------------------------

    def _features(self, image: torch.Tensor, layers: set[str], pooling: str) -> dict:
        return self.net(image.contiguous(memory_format=self.memory_format), layers, pooling)

    def _prepare_styles(self, item: RenderItem, config: EngineConfig) -> list:
        prepared, total = [], sum(w for _, w in item.styles)
        if total <= 0:
            raise ValueError("style blend weights must add up to more than zero")
        for image, weight in item.styles:
            image = image.float()
            if config.color == "luminance":
                image = color.match_luminance(image, item.content.float())
            elif config.color == "histogram":
                image = color.match_histogram(image, item.content.float())
            prepared.append((image.to(self.device), weight / total))
        return prepared

    def _sliced_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(self.device).manual_seed(0)
        return self._generator

    @torch.no_grad()
    def _targets(
        self,
        guide: torch.Tensor,
        styles: list,
        config: EngineConfig,
        dims: tuple[int, int],
        long_side: int,
    ) -> _Targets:
        cfeat = self._features(_resize(guide, dims), {config.content_layer}, config.pooling)
        ctarget = cfeat[config.content_layer].float()
        layers = {name for name, _ in config.style_layers}
        style_long = max(16, round(long_side * config.style_scale))
        cache: dict[tuple[int, int], tuple[dict, dict, dict]] = {}
        per_item, sliced = [], config.style_loss == "sliced"
        samples: dict[str, list[list]] = {name: [] for name in layers}
        for item_styles in styles:
            means: dict[str, torch.Tensor] = {}
            grams: dict[str, torch.Tensor] = {}
            for name in layers:
                samples[name].append([])
            for image, weight in item_styles:
                key = (id(image), style_long)
                if key not in cache:
                    h, w = scale_dims(*image.shape[-2:], style_long)
                    feats = self._features(_resize(image[None], (h, w)), layers, config.pooling)
                    # float64: an uncentred second moment minus mean x mean loses the small
                    # eigenvalues of a covariance in fp32 (the W2 target needs them)
                    stats = {name: moments(f, torch.float64) for name, f in feats.items()}
                    cache[key] = (
                        {n: s[0][0] for n, s in stats.items()},
                        {n: s[1][0] for n, s in stats.items()},
                        {n: style_samples(f) for n, f in feats.items()} if sliced else {},
                    )
                mean, gram, kept = cache[key]
                for name in layers:
                    means[name] = means.get(name, 0) + weight * mean[name]
                    grams[name] = grams.get(name, 0) + weight * gram[name]
                    if sliced:
                        samples[name][-1].append((kept[name], weight))
            per_item.append((means, grams))
        targets: dict[str, StyleTarget | SlicedTarget] = {
            name: SlicedTarget(samples[name], self._sliced_generator())
            if sliced
            else StyleTarget(
                torch.stack([means[name] for means, _ in per_item]),
                torch.stack([grams[name] for _, grams in per_item]),
                config.style_loss,
                self.w2_sqrt,
            )
            for name in layers
        }
        return _Targets(ctarget, content_norm(ctarget), targets)

    def _objective(
        self, x: torch.Tensor, targets: _Targets, config: EngineConfig
    ) -> dict[str, torch.Tensor]:
        layers = {name for name, _ in config.style_layers} | {config.content_layer}
        feats = self._features(x, layers, config.pooling)
        total_weight = sum(w for _, w in config.style_layers)
        weighted = [(name, w) for name, w in config.style_layers if w]
        if config.style_loss == "wasserstein":  # the layers' square roots batched by size
            values = wasserstein2_layers(
                [feats[name] for name, _ in weighted],
                [targets.styles[name] for name, _ in weighted],  # type: ignore[misc]
            )
            per_layer = [v.float() for v in values]
        else:
            per_layer = [targets.styles[name].loss(feats[name]) for name, _ in weighted]
        style = sum(w * v for (_, w), v in zip(weighted, per_layer, strict=True)) / total_weight
        content = content_loss(feats[config.content_layer], targets.content, targets.content_norm)
        tv = tv_loss(x.float())
        total = (
            config.style_weight * style + config.content_weight * content + config.tv_weight * tv
        )
        losses = {"total": total, "style": style, "content": content, "tv": tv}
        if config.chroma_tv_weight:
            losses["chroma_tv"] = tv_loss(color.chroma(x.float()))
            losses["total"] = total + config.chroma_tv_weight * losses["chroma_tv"]
        return losses

    def _adam(self, x, m, v, avg, step, targets, config, iterations, progress, pin=None) -> None:
        """Adam on the pixels. On CUDA, after a few eager warm-up steps, one step is captured as
        a CUDA graph and replayed, so launching ~300 small kernels costs one call per step."""
        b1, b2 = BETAS
        report = max(1, iterations // 20)
        x.requires_grad_(True)
        # Losses are means over pixels; scaled by the pixel count, per-pixel gradients keep one
        # magnitude at every scale, so Adam's moments stay valid when carried to the next scale
        # and its epsilon never dominates.
        pixels = x.shape[-2] * x.shape[-1]

        def one_step() -> None:
            loss = self._objective(x, targets, config)["total"].sum() * pixels
            (grad,) = torch.autograd.grad(loss, x)
            with torch.no_grad():
                step.add_(1)
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v / (1 - b2**step)).sqrt_().add_(EPS)
                x.addcdiv_(m, denom * ((1 - b1**step) / config.lr), value=-1).clamp_(0, 1)
                if pin is not None:  # inside the loop, so the surroundings blend into it
                    x.mul_(pin[0]).add_(pin[1])
                if avg is not None:
                    avg.lerp_(x, 1 - config.ema)

        graph, warmup = None, 3
        # W2 steps in the graph with its matmul-only square root (Newton-Schulz; eigh waits on
        # the device to check its result, which a graph cannot hold); the sliced loss draws
        # from its own generator and steps eagerly.
        capturable = config.style_loss == "gram" or (
            config.style_loss == "wasserstein" and self.w2_sqrt == "newton"
        )
        use_graph = (
            self.cuda_graphs
            and self.device.type == "cuda"
            and iterations > warmup + 2
            and capturable
        )
        side = torch.cuda.Stream() if use_graph else None
        for i in range(iterations):
            if graph is not None:
                graph.replay()
            elif use_graph and i < warmup:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    one_step()
                torch.cuda.current_stream().wait_stream(side)
            elif use_graph:
                graph = self._capture(one_step)
                if graph is None:
                    use_graph = False
                    one_step()
                else:
                    graph.replay()
            else:
                one_step()
            if progress and ((i + 1) % report == 0 or i + 1 == iterations):
                progress(i + 1, iterations)
        x.requires_grad_(False)

    @staticmethod
    def _capture(fn) -> torch.cuda.CUDAGraph | None:
        """One step as a CUDA graph (recorded, not run), or None where capture fails."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
        except RuntimeError as exc:  # capture is an optimisation: fall back to eager steps
            # (only torch's errors: a worker's time limit, raised as another exception, must
            # reach the worker)
            torch.cuda.synchronize()
            warnings.warn(f"CUDA graph capture failed, running eagerly: {exc}", stacklevel=2)
            return None
        return graph

    @contextlib.contextmanager
    def _fp32_network(self):
        """The network in fp32 for the length of the block (L-BFGS on a bf16 engine)."""
        if self._fp32_state is None:
            yield
            return
        if self._net_fp32 is None:
            net = VGG19Features()
            net.load_state_dict(self._fp32_state)
            self._net_fp32 = net.to(self.device).to(memory_format=self.memory_format).eval()
        bf16, self.net = self.net, self._net_fp32
        try:
            yield
        finally:
            self.net = bf16

    def _lbfgs(self, x, targets, config, iterations) -> None:
        # L-BFGS flattens its parameters with .view(-1): optimise a contiguous copy.
        param = x.detach().contiguous().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [param],
            lr=1,
            max_iter=iterations,
            history_size=20,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = self._objective(param, targets, config)["total"].sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            x.copy_(param.detach().clamp_(0, 1))

    def _init(self, items, styles, guide, config, dims) -> torch.Tensor:
        if config.init == "content":
            return _resize(guide, dims).clamp(0, 1).clone()
        out = []
        for item, item_styles in zip(items, styles, strict=True):
            gen = torch.Generator().manual_seed(item.seed)
            noise = torch.randn(3, *dims, generator=gen)
            if config.init == "noise":
                out.append((0.5 + 0.2 * noise).clamp(0, 1))
                continue
            mean = sum(w * img.reshape(3, -1).mean(1).cpu() for img, w in item_styles)
            second = sum(
                w * (lambda f: f @ f.T / f.shape[1])(img.reshape(3, -1).cpu())
                for img, w in item_styles
            )
            cov = second - torch.outer(mean, mean) + 1e-5 * torch.eye(3)
            chol = torch.linalg.cholesky(cov.double()).float()
            out.append((mean.view(3, 1, 1) + torch.einsum("ij,jhw->ihw", chol, noise)).clamp(0, 1))
        return torch.stack(out).to(self.device)
