"""Render parameters and the presets that fill in what a manifest leaves out.

Presets trade quality for time; the figures behind them are in docs/performance.md. A resolved
parameter set has no gaps, so it hashes to the same render id wherever it is computed.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SIDE = 6144  # measured: 8192 px overflows 32-bit indexing in cuDNN (docs/performance.md)
MIN_SIDE = 16
MAX_ITERATIONS = 10_000

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
ALL_LAYERS = (
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

Side = Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)]
Iterations = Annotated[int, Field(ge=1, le=MAX_ITERATIONS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecaySchedule(Strict):
    """Iterations at scale i (coarsest first): max(minimum, round(first * decay**i))."""

    first: Iterations
    decay: float = Field(1.0, gt=0, le=1)
    minimum: Iterations = 1


IterationPlan = Iterations | list[Iterations] | DecaySchedule


class Pyramid(Strict):
    """Coarse-to-fine sizes: start, start*ratio, ... up to the output's long side.

    A list of iterations applies to the scales in order; the last entry repeats for finer ones.
    """

    start: Side = 128
    ratio: float = Field(math.sqrt(2), ge=1.05, le=4)
    iterations: IterationPlan

    @field_validator("iterations")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one iteration count")
        return value


class Palette(Strict):
    """Brand colours the output is pulled towards after rendering (workers/engine/color.py)."""

    colors: list[Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")]] = Field(
        min_length=1, max_length=16
    )
    strength: float = Field(0.5, ge=0, le=1)

    @field_validator("colors")
    @classmethod
    def _lower(cls, colors: list[str]) -> list[str]:
        return [c.lower() for c in colors]


class RenderParams(Strict):
    """What a manifest may set. Unset fields (None) come from the preset."""

    preset: Literal["draft", "standard", "high"] = "standard"
    # a long side (int), an exact frame "WxH" or a channel name (common/sizes.py)
    sizes: list[Side | str] = Field(default=[512], min_length=1, max_length=16)
    style_weight: float | None = Field(None, ge=0, le=1e6)
    content_weight: float | None = Field(None, ge=0, le=1e6)
    tv_weight: float | None = Field(None, ge=0, le=1e6)
    chroma_tv_weight: float | None = Field(None, ge=0, le=1e6)
    style_scale: float = Field(1.0, ge=0.05, le=4)
    color: Literal["none", "luminance", "histogram"] = "none"
    init: Literal["content", "noise", "style"] = "content"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    style_loss: Literal["gram", "wasserstein", "sliced"] | None = None
    optimizer: Literal["adam", "lbfgs"] | None = None
    lr: float | None = Field(None, gt=0, le=1)
    pooling: Literal["max", "avg"] | None = None
    style_layers: dict[str, float] | None = None
    content_layer: str | None = None
    pyramid: Pyramid | None = None
    ema: float | None = Field(None, ge=0, lt=1)
    palette: Palette | None = None

    @field_validator("sizes")
    @classmethod
    def _distinct_sizes(cls, sizes: list[int | str]) -> list[int | str]:
        """Each a long side, "WxH" or a channel (normalised: "1080X1080 " -> "1080x1080")."""
        from common.sizes import parse_size

        parsed = [parse_size(size) for size in sizes]
        canonical = [p.long if not p.exact else p.channel for p in parsed]
        if len(set(canonical)) != len(canonical):
            raise ValueError("sizes must be distinct")
        return canonical

    @field_validator("style_layers")
    @classmethod
    def _known_style_layers(cls, layers: dict[str, float] | None) -> dict[str, float] | None:
        if layers is None:
            return None
        unknown = sorted(set(layers) - set(ALL_LAYERS))
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; choose from {list(ALL_LAYERS)}")
        if not layers or any(w < 0 for w in layers.values()) or sum(layers.values()) <= 0:
            raise ValueError("layer weights must be >= 0 and not all zero")
        return layers

    @field_validator("content_layer")
    @classmethod
    def _known_content_layer(cls, layer: str | None) -> str | None:
        if layer is not None and layer not in ALL_LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose from {list(ALL_LAYERS)}")
        return layer

    @model_validator(mode="after")
    def _lbfgs_has_no_ema(self) -> RenderParams:
        if self.optimizer == "lbfgs" and self.ema:
            raise ValueError("ema (iterate averaging) applies to adam only")
        if self.optimizer == "lbfgs" and self.style_loss == "sliced":
            raise ValueError("style_loss sliced needs optimizer adam (new directions every step)")
        return self

    def merged(self, override: RenderParams | None) -> RenderParams:
        """This set with the fields that ``override`` set explicitly taken from it."""
        if override is None:
            return self
        return self.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})

    def resolved(self) -> dict[str, Any]:
        """Every engine parameter concrete, sizes excluded (each render has one size)."""
        values = dict(PRESETS[self.preset])
        for name in self.model_fields_set | {"style_scale", "color", "init", "seed"}:
            value = getattr(self, name)
            if name != "sizes" and value is not None:
                values[name] = value
        values["preset"] = self.preset
        if isinstance(values["pyramid"], BaseModel):
            values["pyramid"] = values["pyramid"].model_dump()
        if isinstance(values.get("palette"), BaseModel):
            values["palette"] = values["palette"].model_dump()
        if values["optimizer"] == "lbfgs":
            values["ema"] = 0.0
        return values


def schedule(params: dict[str, Any], long_side: int) -> list[tuple[int, int]]:
    """(long side, iterations) per pyramid scale of a resolved parameter set, coarsest first.

    The engine computes the same plan itself (it imports nothing but torch); a test keeps the
    two in step. Here it sizes task time limits without importing the engine.
    """
    pyramid = params["pyramid"]
    plan, sides, side = pyramid["iterations"], [], float(pyramid["start"])
    while side < long_side * 0.95:
        sides.append(round(side))
        side *= pyramid["ratio"]
    sides.append(long_side)
    out = []
    for i, s in enumerate(sides):
        if isinstance(plan, int):
            n = plan
        elif isinstance(plan, list | tuple):
            n = plan[min(i, len(plan) - 1)]
        else:
            n = max(plan.get("minimum", 1), round(plan["first"] * plan.get("decay", 1.0) ** i))
        out.append((s, n))
    return out


_DEFAULT_LAYERS = {name: 1.0 for name in STYLE_LAYERS}

PRESETS: dict[str, dict[str, Any]] = {
    "draft": {
        "style_weight": 1.0,
        "content_weight": 1.0,
        "tv_weight": 0.5,
        "chroma_tv_weight": 6.0,
        "style_loss": "wasserstein",
        "optimizer": "adam",
        "lr": 0.03,
        "pooling": "avg",
        "style_layers": _DEFAULT_LAYERS,
        "content_layer": "relu4_2",
        "ema": 0.9,
        "pyramid": {
            "start": 128,
            "ratio": 2.0,
            "iterations": {"first": 120, "decay": 0.7, "minimum": 50},
        },
    },
    "standard": {
        "style_weight": 1.0,
        "content_weight": 1.0,
        "tv_weight": 0.5,
        "chroma_tv_weight": 6.0,
        "style_loss": "wasserstein",
        "optimizer": "adam",
        "lr": 0.02,
        "pooling": "avg",
        "style_layers": _DEFAULT_LAYERS,
        "content_layer": "relu4_2",
        "ema": 0.9,
        "pyramid": {
            "start": 128,
            "ratio": 2.0,
            "iterations": {"first": 200, "decay": 0.7, "minimum": 80},
        },
    },
    "high": {
        "style_weight": 1.0,
        "content_weight": 1.0,
        "tv_weight": 0.5,
        "chroma_tv_weight": 6.0,
        "style_loss": "wasserstein",
        "optimizer": "adam",
        "lr": 0.02,
        "pooling": "avg",
        "style_layers": _DEFAULT_LAYERS,
        "content_layer": "relu4_2",
        "ema": 0.95,
        "pyramid": {
            "start": 128,
            "ratio": math.sqrt(2),
            "iterations": {"first": 200, "decay": 0.7, "minimum": 80},
        },
    },
}
