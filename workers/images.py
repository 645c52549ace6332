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


def detail_centre(img: Image.Image) -> tuple[float, float]:
    """Where an image's detail is (x, y in 0..1): the centroid of its edge energy (gradient
    magnitude of the luminance at up to 256 px), pulled halfway to the centre so a busy
    corner does not push a crop off the subject. No trained model: a product on a plain
    ground, the usual ad shot, has its edges on the product."""
    small = img.convert("L")
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    grey = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8).float()
    grey = grey.view(small.height, small.width)
    if small.width < 3 or small.height < 3:
        return 0.5, 0.5
    energy = torch.zeros_like(grey)
    energy[1:-1, 1:-1] = (grey[1:-1, 2:] - grey[1:-1, :-2]).abs() + (
        grey[2:, 1:-1] - grey[:-2, 1:-1]
    ).abs()
    total = float(energy.sum())
    if total <= 0:
        return 0.5, 0.5
    ys = (torch.arange(small.height).float() + 0.5) / small.height
    xs = (torch.arange(small.width).float() + 0.5) / small.width
    x = float((energy.sum(0) * xs).sum()) / total
    y = float((energy.sum(1) * ys).sum()) / total
    return 0.5 * (x + 0.5), 0.5 * (y + 0.5)
