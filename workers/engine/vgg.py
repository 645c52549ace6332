"""VGG19 feature extractor up to relu5_1, and where its weights come from.

Weights are torchvision's IMAGENET1K_V1 (cache or download), a local state-dict file, or
``random:SEED``. Random weights are only ever asked for by name, never a fallback.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (name, out_channels) of each conv; "pool" between blocks. Matches torchvision's vgg19.features.
_CFG = [
    ("1_1", 64),
    ("1_2", 64),
    "pool",
    ("2_1", 128),
    ("2_2", 128),
    "pool",
    ("3_1", 256),
    ("3_2", 256),
    ("3_3", 256),
    ("3_4", 256),
    "pool",
    ("4_1", 512),
    ("4_2", 512),
    ("4_3", 512),
    ("4_4", 512),
    "pool",
    ("5_1", 512),
]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(Exception):
    """VGG19 weights that cannot be found, read or used; the message names the source."""


def _conv_specs() -> list[tuple[str, int, int, int]]:
    """(layer name, torchvision features index, in_channels, out_channels) per conv."""
    specs, index, channels = [], 0, 3
    for item in _CFG:
        if item == "pool":
            index += 1
            continue
        name, out = item
        specs.append((name, index, channels, out))
        channels = out
        index += 2  # conv then relu
    return specs


class VGG19Features(nn.Module):
    """The convolutional trunk of VGG19, returning the ReLU outputs that callers ask for."""

    def __init__(self) -> None:
        super().__init__()
        # Replicate, not zero, padding: zeros read as a dark frame, and the optimiser paints
        # clipped colour bands into the outer pixels to match the style's statistics there
        # (border/interior deviation 1.13-1.22 with zeros, 0.92-1.0 replicated, measured in
        # docs/quality.md; replicating the first layer alone gave 1.09-1.17).
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, padding=1, padding_mode="replicate")
            for _, _, cin, cout in _conv_specs()
        )
        self.names = [f"relu{name}" for name, _, _, _ in _conv_specs()]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(
        self, image: torch.Tensor, layers: set[str], pooling: str = "avg"
    ) -> dict[str, torch.Tensor]:
        x = ((image - self.mean) / self.std).to(self.convs[0].weight.dtype)
        pool = F.avg_pool2d if pooling == "avg" else F.max_pool2d
        out: dict[str, torch.Tensor] = {}
        for conv, name in zip(self.convs, self.names, strict=True):
            if name.endswith("_1") and name != "relu1_1":
                x = pool(x, 2, ceil_mode=True)
            x = F.relu(conv(x), inplace=True)
            if name in layers:
                out[name] = x
                if len(out) == len(layers):
                    break
        return out


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic He-initialised weights in torchvision's key layout (same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for _, index, cin, cout in _conv_specs():
        std = math.sqrt(2.0 / (cin * 9))
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
        state[f"features.{index}.bias"] = torch.zeros(cout)
    return state


def _read_state(spec: str) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict and a short id that says exactly which weights these are."""
    if spec == "random" or spec.startswith("random:"):
        seed_text = spec.partition(":")[2] or "0"
        if not seed_text.isdigit():
            raise WeightsError(f"weights {spec!r}: the seed after 'random:' must be an integer")
        return random_state_dict(int(seed_text)), f"random:{int(seed_text)}"
    if spec == "imagenet":
        return _imagenet_state(), "torchvision:IMAGENET1K_V1"
    path = Path(spec.removeprefix("file://"))
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"weights file {path} is not a readable torch state dict: {exc}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state, f"sha256:{digest.hexdigest()[:16]}"


def _imagenet_state() -> dict[str, torch.Tensor]:
    try:
        from torchvision.models import VGG19_Weights
    except ImportError as exc:
        raise WeightsError(f"weights 'imagenet' need torchvision: {exc}") from None
    weights = VGG19_Weights.IMAGENET1K_V1
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True
        )
    except Exception as exc:
        raise WeightsError(
            f"could not load torchvision's IMAGENET1K_V1 VGG19 weights ({weights.url}; cache "
            f"{torch.hub.get_dir()}/checkpoints): {exc}. Pass a local file or s3:// URI as the "
            "weights, or 'random' to render with untrained weights on purpose."
        ) from None


def load_vgg19(spec: str) -> tuple[VGG19Features, str]:
    """The network with weights from ``spec`` (on the CPU, fp32) and the weights' id."""
    state, weights_id = _read_state(spec)
    net = VGG19Features()
    problems = []
    for conv, (name, index, cin, cout) in zip(net.convs, _conv_specs(), strict=True):
        for part, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            tensor = state.get(f"features.{index}.{part}", state.get(f"{index}.{part}"))
            if tensor is None:
                problems.append(f"conv{name}.{part} missing (key features.{index}.{part})")
            elif tuple(tensor.shape) != shape:
                problems.append(f"conv{name}.{part} has shape {tuple(tensor.shape)}, not {shape}")
            else:
                getattr(conv, part).data.copy_(tensor.float())
    if problems:
        raise WeightsError(f"weights {spec} do not fit VGG19: " + "; ".join(problems[:4]))
    net.eval().requires_grad_(False)
    return net, weights_id
