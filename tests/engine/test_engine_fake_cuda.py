"""Every preset's step on the CUDA code path, with no GPU: the engine's tensors are fake CUDA
tensors (FakeTensorMode: shapes, dtypes and devices, no data), and a dispatch mode records
every op of one Adam step. A CUDA graph can hold the step only if none of them decomposes a
matrix (eigh, SVD: host syncs inside), reads a value back to the host, or makes or reads a CPU
tensor; the recorder fails the step on any of these. The old eigh root is flagged, and so is an
``.item()``: the check can fail.

torch's C++ autograd engine asks the CUDA driver for a context when it meets a CUDA tensor, so
the step's ``torch.autograd.grad`` is replaced here by a walk of the same autograd graph in
Python (``python_grad``): every node's own backward, called in topological order, each of its
ops dispatched and recorded like the forward's."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from common.params import RenderParams  # noqa: E402
from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.losses import default_sqrt  # noqa: E402

DECOMPOSITION = re.compile(r"eig|svd|cholesky|linalg_lu|_linalg_check_errors|lstsq|solve|inv")
HOST_READS = ("_local_scalar_dense", "is_nonzero", "item", "equal")


class StepRecorder(TorchDispatchMode):
    """Every aten op dispatched while active, and the reasons a CUDA graph could not hold it."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if DECOMPOSITION.search(name):
            self.problems.append(f"{name}: a decomposition (host sync, not capturable)")
        if name in HOST_READS:
            self.problems.append(f"{name}: reads a value back to the host")
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in inputs):
            self.problems.append(f"{name}: takes a CPU tensor")
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in outputs):
            self.problems.append(f"{name}: makes a CPU tensor (a copy to the host, or a new one)")
        return out


class _OneStep(Exception):
    pass


@torch.no_grad()
def python_grad(output: torch.Tensor, inputs, **_) -> tuple:
    """d output / d inputs by calling each autograd node of ``output``'s graph in topological
    order, consumers first (what the C++ engine does, without its CUDA stream bookkeeping)."""
    order, seen, stack = [], set(), [(output.grad_fn, False)]
    while stack:  # depth-first post-order: a node after everything it feeds
        node, done = stack.pop()
        if done:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack.append((node, True))
            stack.extend((nxt, False) for nxt, _ in node.next_functions if nxt is not None)
    grads: dict = {output.grad_fn: [torch.ones_like(output)]}
    leaves: dict[int, torch.Tensor] = {}
    for node in reversed(order):
        incoming = grads.pop(node, None)
        if incoming is None:
            continue
        if type(node).__name__ == "AccumulateGrad":
            leaves[id(node.variable)] = incoming[0]
            continue
        # a custom autograd.Function's node runs its backward through .apply (tensor first)
        outs = node.apply(*incoming) if hasattr(node, "_forward_cls") else node(*incoming)
        outs = (outs,) if outs is None or isinstance(outs, torch.Tensor) else outs
        for (nxt, slot), grad in zip(node.next_functions, outs, strict=False):
            if nxt is None or grad is None:
                continue
            meta = nxt._input_metadata[slot]  # as the engine's validate_outputs: sum a
            if tuple(grad.shape) != tuple(meta.shape):  # broadcast back, cast to the input's
                grad = grad.sum_to_size(meta.shape)
            grad = grad.to(meta.dtype)
            into = grads.setdefault(nxt, [])
            into.extend([None] * (slot + 1 - len(into)))
            into[slot] = grad if into[slot] is None else into[slot] + grad
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    return tuple(leaves[id(x)] for x in inputs)


def fake_cuda_engine(weights_file, mode: FakeTensorMode, w2_sqrt: str = "auto") -> StyleEngine:
    """The engine as StyleEngine sets it up on CUDA (bf16 network, channels_last, the device's
    own W2 root), its weights fake CUDA tensors. Built on the CPU first, outside ``mode``
    (moving a real module under fake mode cannot swap its parameters)."""
    with torch.utils._python_dispatch._disable_current_modes():
        engine = StyleEngine(str(weights_file), "cpu", precision="fp32")
    net = engine.net
    for conv in net.convs:
        weight = mode.from_tensor(conv.weight.detach()).to("cuda", torch.bfloat16)
        conv.weight = torch.nn.Parameter(
            weight.contiguous(memory_format=torch.channels_last), requires_grad=False
        )
        conv.bias = torch.nn.Parameter(
            mode.from_tensor(conv.bias.detach()).to("cuda", torch.bfloat16), requires_grad=False
        )
    net.mean = mode.from_tensor(net.mean).to("cuda")
    net.std = mode.from_tensor(net.std).to("cuda")
    engine.device = torch.device("cuda")
    engine.precision = "bf16"
    engine.memory_format = torch.channels_last
    engine.w2_sqrt = default_sqrt(engine.device) if w2_sqrt == "auto" else w2_sqrt
    return engine


def record_one_step(engine: StyleEngine, config: EngineConfig, size: int = 64) -> StepRecorder:
    """Render until the first scale's optimisation, record its one Adam step, stop."""
    recorder = StepRecorder()
    adam = engine._adam

    def recorded(*args, **kwargs):
        with recorder, pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.autograd, "grad", python_grad)
            try:
                adam(*args, **kwargs)
            except Exception as exc:  # a fake tensor refuses a host read after it is recorded
                recorder.problems.append(f"step raised {type(exc).__name__}: {exc}")
        raise _OneStep

    engine._adam = recorded  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(0)
    content = torch.rand(3, size, size * 3 // 4, generator=gen)
    style = torch.rand(3, size, size, generator=gen)
    one_scale = replace(config, start=size, iterations=1)
    with pytest.raises(_OneStep):
        engine.render_batch([RenderItem(content, [(style, 1.0)])] * 2, one_scale)
    assert recorder.ops, "no step was recorded"
    return recorder


def preset(name: str) -> EngineConfig:
    return EngineConfig.from_params(RenderParams(preset=name).resolved())


@pytest.mark.parametrize("name", ["draft", "standard", "high"])
def test_a_preset_step_on_cuda_has_no_decomposition_no_host_read_no_cpu_tensor(weights_file, name):
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        engine = fake_cuda_engine(weights_file, mode)
        assert engine.w2_sqrt == "newton"
        recorder = record_one_step(engine, preset(name))
    assert recorder.problems == [], sorted(set(recorder.problems))
    # it was the whole step: the network's convolutions, both backward, and Adam's update
    assert recorder.ops.count("convolution") >= 12
    assert "convolution_backward" in recorder.ops and "addcdiv_" in recorder.ops
    assert recorder.ops.count("bmm") + recorder.ops.count("mm") >= 3 * 35  # Newton-Schulz


def test_the_check_flags_the_eigh_root_and_a_host_read(weights_file):
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        engine = fake_cuda_engine(weights_file, mode, w2_sqrt="eigh")
        recorder = record_one_step(engine, preset("standard"))
    assert any("eigh" in p for p in recorder.problems), recorder.problems

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        engine = fake_cuda_engine(weights_file, mode)
        objective = engine._objective

        def reads_back(*args):
            losses = objective(*args)
            losses["total"].sum().item()  # what a progress report inside the loop would do
            return losses

        engine._objective = reads_back  # type: ignore[method-assign]
        recorder = record_one_step(engine, preset("draft"))
    assert any("host" in p for p in recorder.problems), recorder.problems


def test_fake_tensors_are_what_the_step_ran_on(weights_file):
    """The step really ran on (fake) CUDA tensors: nothing silently fell back to the CPU."""
    seen = []
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        engine = fake_cuda_engine(weights_file, mode)
        objective = engine._objective

        def spy(x, *args):
            seen.append(x)
            return objective(x, *args)

        engine._objective = spy  # type: ignore[method-assign]
        record_one_step(engine, preset("high"))
    assert seen and all(isinstance(x, FakeTensor) and x.device.type == "cuda" for x in seen)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_the_python_walk_gives_the_engines_gradient(weights_file):
    """On real CPU tensors, python_grad and torch.autograd.grad agree on a preset's objective:
    the walk runs the backward the engine would."""
    engine = StyleEngine(str(weights_file), "cpu", w2_sqrt="newton")
    gen = torch.Generator().manual_seed(0)
    items = [RenderItem(torch.rand(3, 40, 32, generator=gen), [(torch.rand(3, 40, 40), 1.0)])]
    config = replace(preset("standard"), start=40)
    styles = [engine._prepare_styles(item, config) for item in items]
    guide = items[0].content[None]
    targets = engine._targets(guide, styles, config, (40, 32), 40)
    grads = []
    for walk in (torch.autograd.grad, python_grad):
        x = guide.clone().requires_grad_(True)
        (grad,) = walk(engine._objective(x, targets, config)["total"].sum(), x)
        grads.append(grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-9)
