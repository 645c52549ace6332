"""Renders as a worker does them: inputs fetched and decoded, compatible renders batched
through the engine, outputs encoded with their metadata and written whole.

A render whose output already exists with its own id in the metadata is skipped, so running a
render twice yields one output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from PIL import Image, ImageChops, ImageFilter

from common.batching import batches as group_batches
from common.errors import (
    ConfigError,
    DeviceError,
    InputError,
    StylebatchError,
    TransientError,
)
from common.expand import ENGINE_VERSION, Render
from common.imageio import (
    CONTENT_TYPES,
    decode,
    decode_alpha,
    encode,
    fit_long_side,
    fitted_size,
)
from common.outputs import earlier, measured  # noqa: F401 (workers.render's callers)
from common.queue import MAX_BATCH_PIXELS, torch_threads
from common.settings import Settings
from common.sizes import cover_box, parse_size
from common.storage import Storage
from workers.cache import InputCache
from workers.copies import write_copies

_DEVICE_TROUBLE = re.compile(
    r"CUDA|cuDNN|CUBLAS|NCCL|NVIDIA|device-side assert|out of memory|no kernel image|"
    r"ECC error|GPU is lost|illegal memory access|accelerator",
    re.IGNORECASE,
)


def is_device_error(exc: BaseException) -> bool:
    """A failure of the device, not of the render (torch raises these as RuntimeError,
    torch.OutOfMemoryError or torch.AcceleratorError)."""
    if type(exc).__name__ in ("OutOfMemoryError", "AcceleratorError", "CudaError"):
        return True
    return bool(_DEVICE_TROUBLE.search(f"{type(exc).__name__}: {exc}"))


@dataclass
class Outcome:
    render: Render
    status: str  # done | failed | superseded (another attempt has it: nothing written)
    seconds: float = 0.0
    error: str | None = None
    losses: dict[str, float] | None = None
    device: str | None = None  # where it ran: cpu, or cuda:<card>
    pixel_iterations: float = 0.0


class ImageCache:
    """Decoded inputs by URI and content identity, least recently used out first, bounded by
    pixel count: a replaced input is a new entry, never the old picture."""

    def __init__(self, settings: Settings, max_pixels: int = 200_000_000):
        self.settings = settings
        self.max_pixels = max_pixels
        self.inputs = InputCache(settings)
        self.items: OrderedDict[tuple[str, str], Image.Image] = OrderedDict()
        self.alphas: OrderedDict[tuple[str, str], Image.Image | None] = OrderedDict()

    def alpha(self, uri: str, identity: str = "") -> Image.Image | None:
        """An input's own alpha channel ("L"), or None where it has none; decoded under the
        same format allow-list and pixel limits as every input, a few kept."""
        entry = (uri, identity)
        if entry in self.alphas:
            self.alphas.move_to_end(entry)
            return self.alphas[entry]
        limits = self.settings.max_input_pixels, self.settings.min_input_side
        self.alphas[entry] = decode_alpha(self.inputs.read(uri, identity), uri, *limits)
        while len(self.alphas) > 16:
            self.alphas.popitem(last=False)
        return self.alphas[entry]

    def get(self, uri: str, identity: str = "") -> Image.Image:
        entry = (uri, identity)
        if entry in self.items:
            self.items.move_to_end(entry)
            return self.items[entry]
        limits = self.settings.max_input_pixels, self.settings.min_input_side
        img = decode(self.inputs.read(uri, identity), uri, *limits)
        self.items[entry] = img
        while sum(i.width * i.height for i in self.items.values()) > self.max_pixels:
            self.items.popitem(last=False)
        return img


def metadata_for(
    render: Render,
    job_id: str,
    weights_id: str,
    seconds: float | None = None,
    losses: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What an output says about itself: its inputs (with their content identities), its
    parameters, and what making it measured, which a later job that skips it reports."""
    return {
        "job": job_id,
        "render_id": render.id,
        "content": render.content,
        "style": render.style,
        "style_images": [[u, w] for u, w in render.style_images],
        "inputs": render.identities,
        "focus": render.focus,
        "mask": [render.mask, render.mask_strength] if render.mask else None,
        "size": render.size,
        "params": render.params,
        "engine": ENGINE_VERSION,
        "weights": render.weights,
        "weights_id": weights_id,
        "seconds": seconds,
        "losses": losses,
    }


def batches(
    renders: Iterable[Render],
    shape_of: Callable[[Render], tuple[int, int]],
    max_pixels: int = MAX_BATCH_PIXELS,
) -> list[list[Render]]:
    """Renders that can share one optimisation: the one batching rule (common/batching.py),
    by their outputs' real shapes."""
    return group_batches(renders, lambda r: shape_of(r)[0] * shape_of(r)[1], max_pixels)


class Renderer:
    """Wraps one StyleEngine (created on first use) for a process."""

    def __init__(
        self, settings: Settings, weights: str, device: str = "auto", weights_identity: str = ""
    ):
        self.settings = settings
        self.weights = weights
        self.weights_identity = weights_identity
        self.device = device
        self.cache = ImageCache(settings)
        self._engine: Any = None
        self._signer: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from workers.engine import StyleEngine, WeightsError
            from workers.weights import local_weights

            size_threads(self.settings)
            try:
                path = local_weights(self.weights, self.settings, self.weights_identity)
                self._engine = StyleEngine(path, self.device)
            except (WeightsError, OSError) as exc:
                raise ConfigError(f"weights {self.weights}: cannot be loaded: {exc}") from None
            except InputError as exc:
                if "changed after the job was planned" in str(exc):
                    raise  # replaced since submit: the job's to fix (submit again)
                raise ConfigError(f"weights: {exc}") from None  # this worker cannot reach them
        return self._engine

    @property
    def signer(self) -> Any:
        """The content-credentials signer, loaded on first use (its errors fail renders)."""
        if self._signer is None:
            from workers.credentials import CredentialsError, Signer

            try:
                self._signer = Signer(self.settings)
            except CredentialsError as exc:
                raise ConfigError(str(exc)) from None
        return self._signer

    @property
    def weights_id(self) -> str:
        return self.engine.weights_id

    def content_at_size(self, render: Render) -> Image.Image:
        """The content as the output frames it: fitted to a long side, or cover-cropped to an
        exact frame around the render's focus (else the image's centre of detail)."""
        return self._framed(render, self.image(render, render.content))

    def _framed(self, render: Render, img: Image.Image) -> Image.Image:
        size = parse_size(render.size)
        if not size.exact:
            return fit_long_side(img, size.long)
        assert size.width and size.height
        from workers.images import detail_centre  # torch: render workers only

        content = self.image(render, render.content)
        focus = render.focus or detail_centre(content)
        box = cover_box(content.width, content.height, size.width, size.height, focus)
        return img.crop(box).resize((size.width, size.height), Image.Resampling.LANCZOS)

    def protection(self, render: Render) -> Image.Image | None:
        """The render's protection mask framed like its content, feathered, times its
        strength ("L": 255 keeps the photo), or None. A mask of another size is scaled to the
        content's first; one that cannot be read fails the render, naming it."""
        if not render.mask:
            return None
        content = self.image(render, render.content)
        if render.mask == "alpha":
            raw = self.cache.alpha(render.content, render.identities.get(render.content, ""))
            if raw is None:
                raise InputError(f"{render.content}: mask 'alpha' but the image has no alpha")
        else:
            try:
                raw = self.image(render, render.mask).convert("L")
            except InputError as exc:
                raise InputError(f"mask {exc}") from None
        if raw.size != content.size:
            raw = raw.resize(content.size, Image.Resampling.BILINEAR)
        framed = self._framed(render, raw)
        # feathered outwards over 2 % of the long side: inside stays exactly the photo, and
        # the style fades in around it
        soft = framed.filter(ImageFilter.GaussianBlur(max(1.0, 0.02 * max(framed.size))))
        feathered = ImageChops.lighter(framed, soft)
        return feathered.point(lambda v: round(v * render.mask_strength))

    def brush_scale(self, render: Render) -> float:
        """How much larger the whole content is, at an exact frame's crop scale, than the
        frame: style features scale with it, so strokes keep one size relative to the subject
        across every channel size of one content x style."""
        size = parse_size(render.size)
        if not size.exact:
            return 1.0
        assert size.width and size.height
        width, height = self.image(render, render.content).size
        scale = max(size.width / width, size.height / height)
        return max(width, height) * scale / size.long

    def image(self, render: Render, uri: str) -> Image.Image:
        """One of the render's inputs, as it was when the job was planned."""
        return self.cache.get(uri, render.identities.get(uri, ""))

    def shape_of(self, render: Render) -> tuple[int, int]:
        """The output's (height, width), from the decoded size alone (no resize)."""
        size = parse_size(render.size)
        if size.exact:
            assert size.width and size.height
            return size.height, size.width
        width, height = fitted_size(*self.image(render, render.content).size, size.long)
        return height, width

    def render_batch(
        self,
        group: list[Render],
        storage: Storage,
        job_id: str,
        fmt: str,
        quality: int,
        progress: Callable | None = None,
        credentials: bool = False,
        may_write: Callable[[Render], bool] | None = None,
        written: list[Outcome] | None = None,
    ) -> list[Outcome]:
        """Render a compatible group and write each output (with content credentials if
        asked); failures are per render. ``may_write`` is asked just before each write (False:
        another attempt has the render now, and nothing is written); each outcome is also
        appended to ``written`` as it happens, so a time limit mid-group knows what was."""
        written = [] if written is None else written
        from workers.engine import EngineConfig, RenderItem
        from workers.images import to_image, to_tensor

        started = time.perf_counter()
        try:
            config = EngineConfig.from_params(group[0].params)
            brush = self.brush_scale(group[0])  # a group shares one content and size
            if brush != 1.0:
                scale = min(4.0, max(0.05, config.style_scale * brush))
                config = dataclasses.replace(config, style_scale=scale)
            contents: dict[tuple, Any] = {}  # a group shares one content: resize it once
            for r in group:
                if _content_key(r) not in contents:
                    contents[_content_key(r)] = to_tensor(self.content_at_size(r))
            masks = {id(r): self.protection(r) for r in group}
            items = [
                RenderItem(
                    contents[_content_key(r)],
                    [(to_tensor(self.image(r, u)), w) for u, w in r.style_images],
                    seed=int(r.params.get("seed", 0)),
                    protect=to_tensor(m)[:1] if (m := masks[id(r)]) is not None else None,
                )
                for r in group
            ]
            results = self.engine.render_batch(items, config, progress)
        except (SoftTimeLimitExceeded, TransientError, DeviceError, ConfigError):
            raise  # the task handles these: a clean failure, or a retry (elsewhere) later
        except Exception as exc:
            if len(group) > 1:  # find which render is at fault (or OOM at batch 1), keep the rest
                return [
                    o
                    for r in group
                    for o in self.render_batch(
                        [r],
                        storage,
                        job_id,
                        fmt,
                        quality,
                        progress,
                        credentials,
                        may_write,
                        written,
                    )
                ]
            if is_device_error(exc):
                raise DeviceError(_reason(exc)) from exc
            failed = Outcome(group[0], "failed", time.perf_counter() - started, _reason(exc))
            written.append(failed)
            return [failed]
        outcomes = []
        device = self.engine.device_name
        for render, result in zip(group, results, strict=True):
            palette = render.params.get("palette")
            if palette:
                from workers.engine.color import hex_rgb, pull_to_palette

                mask = masks[id(render)]
                result.image = pull_to_palette(
                    result.image,
                    [hex_rgb(c) for c in palette["colors"]],
                    palette["strength"],
                    to_tensor(mask)[:1] if mask is not None else None,
                )
            height, width = result.image.shape[-2:]
            long = max(height, width)
            work = sum(n * height * width * (side / long) ** 2 for side, n in result.schedule)
            meta = metadata_for(render, job_id, self.weights_id, result.seconds, result.losses)
            if may_write is not None and not may_write(render):
                outcomes.append(Outcome(render, "superseded"))
                continue
            try:
                data = encode(to_image(result.image), fmt, quality, meta)
                if credentials:
                    data = self.signer.sign(data, fmt, meta, render.key)
                flat = _flat_metadata(meta)
                there = storage.put_output(render.key, data, CONTENT_TYPES[fmt], flat, render.id)
                write_copies(storage, render, data, CONTENT_TYPES[fmt], flat)
            except (SoftTimeLimitExceeded, TransientError, ConfigError):
                raise  # the task's to handle, never this render's error
            except Exception as exc:
                failed = Outcome(render, "failed", result.seconds, _reason(exc))
                outcomes.append(dataclasses.replace(failed, device=device, pixel_iterations=work))
                written.append(outcomes[-1])
                continue
            if there is not None:  # another attempt wrote this render first: report its record
                prior = measured(there, render.id) or {}
                seconds = prior.get("seconds") or result.seconds
                outcome = Outcome(render, "done", seconds, None, prior.get("losses"), device, work)
            else:
                outcome = Outcome(render, "done", result.seconds, None, result.losses, device, work)
            outcomes.append(outcome)
            written.append(outcome)
        return outcomes


def size_threads(settings: Settings) -> int:
    """Sets this process's torch threads to what it really has (common.queue.torch_threads:
    its affinity and cgroup quota, or STYLEBATCH_TORCH_THREADS as `stylebatch worker` shares
    them out); one inter-op thread (the engine runs its ops one after another). Returns the
    intra-op count."""
    import torch

    threads = torch_threads(settings)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        with contextlib.suppress(RuntimeError):  # only before the first parallel work
            torch.set_num_interop_threads(1)
    return threads


def _content_key(render: Render) -> tuple[str, str, int]:
    """One version of one content at one size: two versions never share a batch entry."""
    return render.content, render.identities.get(render.content, ""), render.size


def _flat_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """S3 user metadata: short ASCII strings only."""
    return {
        "job": meta["job"],
        "render-id": meta["render_id"],
        "style": meta["style"],
        "size": str(meta["size"]),
        "engine": meta["engine"],
        "weights-id": meta["weights_id"],
        "params": json.dumps(meta["params"], sort_keys=True, separators=(",", ":"))[:1000],
        "content-id": meta["inputs"].get(meta["content"], ""),
        "seconds": "" if meta["seconds"] is None else repr(meta["seconds"]),
        "losses": json.dumps(meta["losses"] or {}, sort_keys=True)[:500],
    }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StylebatchError | ValueError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"
