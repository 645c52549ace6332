"""Engine parameters, checked where they enter, and the coarse-to-fine schedule they imply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LAYERS = (
    "relu1_1",
    "relu1_2",
    "relu2_1",
    "relu2_2",
    "relu3_1",
    "relu3_2",
    "relu3_3",
    "relu3_4",
    "relu4_1",
    "relu4_2",
    "relu4_3",
    "relu4_4",
    "relu5_1",
)
DEFAULT_STYLE_LAYERS = (
    ("relu1_1", 1.0),
    ("relu2_1", 1.0),
    ("relu3_1", 1.0),
    ("relu4_1", 1.0),
    ("relu5_1", 1.0),
)


@dataclass(frozen=True)
class EngineConfig:
    style_weight: float = 1.0
    content_weight: float = 0.2
    tv_weight: float = 0.5
    # extra smoothness on the YIQ chroma channels only: colour speckle, not texture
    chroma_tv_weight: float = 0.0
    style_scale: float = 1.0
    color: str = "none"  # none | luminance | histogram
    init: str = "content"  # content | noise | style
    style_loss: str = "gram"  # gram | wasserstein | sliced
    optimizer: str = "adam"  # adam | lbfgs
    lr: float = 0.02
    pooling: str = "avg"  # avg | max
    style_layers: tuple[tuple[str, float], ...] = DEFAULT_STYLE_LAYERS
    content_layer: str = "relu4_2"
    start: int = 128
    ratio: float = math.sqrt(2)
    # int: every scale; tuple: per scale, last repeats; dict: {first, decay, minimum}
    iterations: Any = 200
    ema: float = 0.0

    def __post_init__(self) -> None:
        choices = {
            "color": ("none", "luminance", "histogram"),
            "init": ("content", "noise", "style"),
            "style_loss": ("gram", "wasserstein", "sliced"),
            "optimizer": ("adam", "lbfgs"),
            "pooling": ("avg", "max"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        for name in ("style_weight", "content_weight", "tv_weight", "chroma_tv_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0.05 <= self.style_scale <= 4:
            raise ValueError("style_scale must be within [0.05, 4]")
        if not 0 < self.lr <= 1:
            raise ValueError("lr must be within (0, 1]")
        if not 0 <= self.ema < 1:
            raise ValueError("ema must be within [0, 1)")
        if self.optimizer == "lbfgs" and self.ema:
            raise ValueError("ema applies to adam only")
        if self.optimizer == "lbfgs" and self.style_loss == "sliced":
            raise ValueError("the sliced style loss needs adam (its directions change every step)")
        if not 16 <= self.start <= 8192 or not 1.05 <= self.ratio <= 4:
            raise ValueError("pyramid start must be 16..8192 and ratio 1.05..4")
        unknown = [n for n, _ in self.style_layers if n not in LAYERS]
        if unknown or self.content_layer not in LAYERS:
            raise ValueError(f"unknown layer(s) {unknown or [self.content_layer]}")
        if not self.style_layers or sum(w for _, w in self.style_layers) <= 0:
            raise ValueError("style_layers need a positive total weight")
        self.iterations_at(0, 1)  # validates the plan

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> EngineConfig:
        """From a resolved manifest parameter set (see common.params)."""
        pyramid = params["pyramid"]
        plan = pyramid["iterations"]
        return cls(
            style_weight=params["style_weight"],
            content_weight=params["content_weight"],
            tv_weight=params["tv_weight"],
            # absent from parameters resolved before engine generation 3: none then
            chroma_tv_weight=params.get("chroma_tv_weight", 0.0),
            style_scale=params["style_scale"],
            color=params["color"],
            init=params["init"],
            style_loss=params["style_loss"],
            optimizer=params["optimizer"],
            lr=params["lr"],
            pooling=params["pooling"],
            style_layers=tuple(sorted(params["style_layers"].items())),
            content_layer=params["content_layer"],
            start=pyramid["start"],
            ratio=pyramid["ratio"],
            iterations=tuple(plan) if isinstance(plan, list) else plan,
            ema=params["ema"],
        )

    def scales(self, long_side: int) -> list[int]:
        """Long sides of the pyramid, coarsest first, ending at ``long_side``."""
        sizes, size = [], float(self.start)
        while size < long_side * 0.95:
            sizes.append(round(size))
            size *= self.ratio
        return [*sizes, long_side]

    def iterations_at(self, index: int, count: int) -> int:
        plan = self.iterations
        if isinstance(plan, int):
            value = plan
        elif isinstance(plan, tuple | list):
            if not plan:
                raise ValueError("iterations list is empty")
            value = plan[min(index, len(plan) - 1)]
        elif isinstance(plan, dict):
            value = max(
                int(plan.get("minimum", 1)), round(plan["first"] * plan.get("decay", 1.0) ** index)
            )
        else:
            raise ValueError(f"iterations must be an int, a list or a decay rule, not {plan!r}")
        if not isinstance(value, int) or not 1 <= value <= 10_000:
            raise ValueError(f"iterations per scale must be 1..10000, not {value!r}")
        return value

    def schedule(self, long_side: int) -> list[tuple[int, int]]:
        """(long side, iterations) per scale."""
        sizes = self.scales(long_side)
        return [(s, self.iterations_at(i, len(sizes))) for i, s in enumerate(sizes)]
