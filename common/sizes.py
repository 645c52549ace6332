"""Output sizes: a long side (``512``: the content's aspect kept), an exact frame (``"1200x628"``)
or a named ad channel (``"meta-story"``). An exact frame is cover-cropped from the content
around a focus point, so it is filled edge to edge; see docs/campaigns.md."""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_SIDE, MAX_SIDE = 16, 6144

# name: (width, height, where the size comes from)
CHANNELS: dict[str, tuple[int, int, str]] = {
    "meta-feed-square": (1080, 1080, "Meta Ads Guide, feed image 1:1"),
    "meta-feed-portrait": (1080, 1350, "Meta Ads Guide, feed image 4:5"),
    "meta-story": (1080, 1920, "Meta Ads Guide, Stories and Reels 9:16"),
    "google-display-landscape": (1200, 628, "Google Ads responsive display, landscape 1.91:1"),
    "google-display-square": (1200, 1200, "Google Ads responsive display, square 1:1"),
    "iab-medium-rectangle": (300, 250, "IAB New Ad Portfolio, medium rectangle"),
    "iab-leaderboard": (728, 90, "IAB New Ad Portfolio, leaderboard"),
}
_FRAME = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True)
class Size:
    long: int  # the output's long side
    width: int | None = None  # an exact frame, or None: the content's aspect
    height: int | None = None
    channel: str = ""  # a channel's name, "WxH" for an unnamed frame, "" for a long side

    @property
    def exact(self) -> bool:
        return self.width is not None

    @property
    def pixels(self) -> int:
        """The output's pixel count (a long side's is at most long x long)."""
        return self.width * self.height if self.width and self.height else self.long**2

    @property
    def label(self) -> str:
        return self.channel or str(self.long)


def parse_size(value: int | str) -> Size:
    """A manifest's size entry; ValueError names what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is not a size")
    if isinstance(value, int):
        _check_side(value)
        return Size(value)
    if not isinstance(value, str):
        raise ValueError(f"size {value!r} must be a long side, WxH or a channel name")
    text = value.strip().lower()
    if text in CHANNELS:
        width, height, _ = CHANNELS[text]
        return Size(max(width, height), width, height, text)
    match = _FRAME.match(text)
    if not match:
        known = ", ".join(CHANNELS)
        raise ValueError(
            f"size {value!r} must be a long side (512), WxH (1200x628) or a channel ({known})"
        )
    width, height = int(match[1]), int(match[2])
    _check_side(width)
    _check_side(height)
    return Size(max(width, height), width, height, f"{width}x{height}")


def _check_side(side: int) -> None:
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise ValueError(f"a side of {side} px is outside {MIN_SIDE}..{MAX_SIDE}")


def cover_box(
    width: int, height: int, frame_w: int, frame_h: int, focus: tuple[float, float]
) -> tuple[int, int, int, int]:
    """The largest box of the frame's aspect inside a width x height image, centred on
    ``focus`` (0..1 each way) as far as the image allows: (left, top, right, bottom)."""
    aspect = frame_w / frame_h
    box_w, box_h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
    box_w, box_h = min(width, round(box_w)), min(height, round(box_h))
    left = min(max(round(focus[0] * width - box_w / 2), 0), width - box_w)
    top = min(max(round(focus[1] * height - box_h / 2), 0), height - box_h)
    return left, top, left + box_w, top + box_h
