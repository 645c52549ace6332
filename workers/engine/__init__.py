"""Multi-scale neural style transfer (Gatys et al.) as a plain torch library.

No queues, storage or settings here: callers hand in tensors and get tensors back.
"""

from workers.engine.config import EngineConfig
from workers.engine.optimize import RenderItem, RenderResult, StyleEngine
from workers.engine.vgg import WeightsError, load_vgg19, random_state_dict

__all__ = [
    "EngineConfig",
    "RenderItem",
    "RenderResult",
    "StyleEngine",
    "WeightsError",
    "load_vgg19",
    "random_state_dict",
]
