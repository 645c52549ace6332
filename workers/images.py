"""PIL images to engine tensors and back."""

from __future__ import annotations

import torch
from PIL import Image


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image to a (3, H, W) float tensor in [0, 1]."""
    data = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).float().div_(255)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] to an RGB image."""
    data = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    array = data.permute(1, 2, 0).contiguous().cpu()
    return Image.frombuffer("RGB", (array.shape[1], array.shape[0]), array.numpy().tobytes())
