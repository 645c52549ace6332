"""Render ids made fast: ``render_id`` (common/expand.py) defines them as the hash of one
canonical JSON document; a 100,000-render plan builds that document from parts that are the
same for many renders (the job's weights and output, a content's, a style's at one size),
each serialised once, so each id costs a string join and a hash, not a dict's serialisation.
The same ids, byte for byte (tests/unit/test_render_ids.py checks them against the
definition on generated inputs)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class RenderIds:
    """``render_id`` with its parts cached. The document's keys, sorted: content, focus,
    generation, mask, output | params, size, style, weights; the first five depend on the
    content alone (with the job's output), the rest on the style and size alone."""

    def __init__(
        self, generation: int, weights: str, identities: dict[str, str], output: Any
    ) -> None:
        self.identities = identities
        self._middle = f',"generation":{_dumps(generation)}'
        self._output = f',"output":{_dumps(output)}'
        self._weights = f',"weights":{_dumps([weights, identities.get(weights, "")])}}}'
        self._contents: dict[tuple, str] = {}
        self._styles: dict[tuple, str] = {}

    def content_part(
        self,
        content: str,
        focus: tuple[float, float] | None,
        mask: tuple[str, float] | None,
    ) -> str:
        key = (content, focus, mask)
        part = self._contents.get(key)
        if part is None:
            ids = self.identities
            masked = [mask[0], ids.get(mask[0], ""), mask[1]] if mask else None
            part = (
                f'{{"content":{_dumps([content, ids.get(content, "")])}'
                f',"focus":{_dumps(list(focus) if focus else None)}'
                f'{self._middle},"mask":{_dumps(masked)}{self._output}'
            )
            self._contents[key] = part
        return part

    def style_part(
        self,
        place: int,
        style_images: tuple[tuple[str, float], ...],
        size: int | str,
        params: dict[str, Any],
    ) -> str:
        """``place``: the style's place in the manifest (its images and parameters are the
        same for every render of it)."""
        key = (place, size)
        part = self._styles.get(key)
        if part is None:
            total = sum(w for _, w in style_images)
            style = sorted(
                [uri, round(w / total, 9), self.identities.get(uri, "")] for uri, w in style_images
            )
            part = (
                f',"params":{_dumps(params)},"size":{_dumps(size)}'
                f',"style":{_dumps(style)}{self._weights}'
            )
            self._styles[key] = part
        return part

    @staticmethod
    def of(content_part: str, style_part: str) -> str:
        return hashlib.sha256((content_part + style_part).encode()).hexdigest()[:24]
