"""Image decoding and encoding with the checks a batch system needs: size limits before
decoding, EXIF orientation, every mode turned into 8-bit RGB, and metadata embedded in outputs."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from common.errors import InputError

META_KEY = "stylebatch"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


# What inputs may be: Pillow knows dozens of formats, and each decoder is attack surface.
# JPEG includes the multi-picture JPEGs (MPO) that phones write.
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")


def decode(data: bytes, name: str, max_pixels: int = 64_000_000, min_side: int = 1) -> Image.Image:
    """Bytes to an upright 8-bit RGB image, or an InputError naming ``name`` (and the setting
    that refused it)."""
    return to_rgb(_open(data, name, max_pixels, min_side), name)


def decode_alpha(
    data: bytes, name: str, max_pixels: int = 64_000_000, min_side: int = 1
) -> Image.Image | None:
    """An input's own alpha channel ("L"), upright like ``decode``'s picture, or None where it
    has none; through the same format allow-list and pixel limits (InputError otherwise)."""
    img = _open(data, name, max_pixels, min_side)
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in img.info:
        return None
    try:
        return img.convert("RGBA").getchannel("A")
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot read its alpha channel ({exc})") from None


def _open(data: bytes, name: str, max_pixels: int, min_side: int) -> Image.Image:
    """Bytes to a loaded, upright image in its own mode: allowed formats only, pixel limits
    checked before decoding."""
    if not data:
        raise InputError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                    "(STYLEBATCH_MAX_INPUT_PIXELS)"
                )
            if min(width, height) < min_side:
                raise InputError(
                    f"{name}: {width}x{height} pixels: a side shorter than {min_side} "
                    "(STYLEBATCH_MIN_INPUT_SIDE)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{name}: refused as a decompression bomb (more pixels than the limit of "
            f"{max_pixels}, STYLEBATCH_MAX_INPUT_PIXELS)"
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{name}: not a recognised image format (accepted: {', '.join(FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None
    return img


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """Any mode to RGB: 16-bit depth scaled down, floats in [0, 1] scaled up, transparency
    flattened onto white. What cannot be mapped to 8 bits faithfully is refused."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        low, high = img.getextrema()
        if low < 0 or high > 65535:
            raise InputError(
                f"{name}: {img.mode} image with values {low}..{high}: not an 8- or 16-bit "
                "image; convert it to 8 or 16 bits per channel"
            )
        img = img.point(lambda v: v / 257).convert("L")
    elif img.mode == "F":
        low, high = img.getextrema()
        if not (low >= 0.0 and high <= 1.0):
            raise InputError(
                f"{name}: floating-point image with values {low:g}..{high:g}, outside 0..1; "
                "convert it to 8 or 16 bits per channel"
            )
        img = img.point(lambda v: v * 255).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGBA", img.size, (255, 255, 255, 255))
        base.alpha_composite(img.convert("RGBA"))
        img = base
    return img.convert("RGB")


def fitted_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) with the longer side ``long_side`` and the aspect ratio kept."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_long_side(img: Image.Image, long_side: int) -> Image.Image:
    """Resize so the longer side is ``long_side``, keeping the aspect ratio."""
    size = fitted_size(*img.size, long_side)
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, quality: int, metadata: dict[str, Any]) -> bytes:
    """Encode with ``metadata`` embedded, so a file alone says what made it."""
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text(META_KEY, text)
        img.save(buf, "PNG", pnginfo=info, optimize=False)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, comment=f"{META_KEY}:{text}".encode())
    elif fmt == "webp":
        xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/" {META_KEY}="{_xml_escape(text)}"/>'
        img.save(buf, "WEBP", quality=quality, xmp=xmp.encode())
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def embedded_metadata(data: bytes) -> dict[str, Any] | None:
    """What ``encode`` embedded, or None for a foreign or unreadable file."""
    try:
        img = Image.open(io.BytesIO(data))
        raw: str | bytes | None = None
        if img.format == "PNG":
            img.load()
            raw = img.text.get(META_KEY)  # type: ignore[attr-defined]
        elif img.format == "JPEG":
            comment = img.info.get("comment", b"")
            if comment.startswith(f"{META_KEY}:".encode()):
                raw = comment[len(META_KEY) + 1 :]
        elif img.format == "WEBP":
            xmp = img.info.get("xmp", b"")
            xmp = xmp.decode() if isinstance(xmp, bytes) else xmp
            marker = f'{META_KEY}="'
            if marker in xmp:
                raw = _xml_unescape(xmp.split(marker, 1)[1].split('"', 1)[0])
        return json.loads(raw) if raw else None
    except Exception:
        return None


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _xml_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&quot;", '"').replace("&amp;", "&")
