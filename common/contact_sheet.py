"""One PNG that shows a whole job at a glance: a row per content, a column per style."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from common.errors import InputError
from common.imageio import decode, decode_alpha, fit_long_side
from common.settings import Settings
from common.sizes import parse_size
from common.storage import Storage, read_input
from common.summary import RenderRecord, Summary

CELL = 256
PAD = 8
LABEL = 18


def _cell(img: Image.Image | None, text: str) -> Image.Image:
    cell = Image.new("RGB", (CELL, CELL + LABEL), (245, 245, 245))
    draw = ImageDraw.Draw(cell)
    if img is None:
        draw.rectangle([4, 4, CELL - 5, CELL - 5], outline=(200, 60, 60), width=3)
        draw.text((CELL // 2 - 20, CELL // 2 - 6), "missing", fill=(200, 60, 60))
    else:
        thumb = fit_long_side(img, CELL)
        cell.paste(thumb, ((CELL - thumb.width) // 2, (CELL - thumb.height) // 2))
    draw.text((4, CELL + 3), text[:40], fill=(20, 20, 20))
    return cell


def contact_sheet(
    contents: list[tuple[str, Image.Image | None]],
    styles: list[tuple[str, Image.Image | None]],
    cells: dict[tuple[str, str], Image.Image | None],
) -> bytes:
    """``contents`` and ``styles`` are (label, thumbnail) in order; ``cells`` maps
    (content label, style label) to the rendered image, or None where it failed."""
    cols, rows = len(styles) + 1, len(contents) + 1
    step_x, step_y = CELL + PAD, CELL + LABEL + PAD
    sheet = Image.new("RGB", (PAD + cols * step_x, PAD + rows * step_y), "white")
    for j, (label, img) in enumerate(styles, start=1):
        sheet.paste(_cell(img, f"style: {label}"), (PAD + j * step_x, PAD))
    for i, (clabel, img) in enumerate(contents, start=1):
        sheet.paste(_cell(img, clabel), (PAD, PAD + i * step_y))
        for j, (slabel, _) in enumerate(styles, start=1):
            result = cells.get((clabel, slabel))
            sheet.paste(_cell(result, f"{clabel} x {slabel}"), (PAD + j * step_x, PAD + i * step_y))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue()


MAX_ROWS, MAX_COLS = 40, 16


def sheet_for(summary: Summary, storage: Storage, settings: Settings) -> bytes:
    """The contact sheet of a job: a row per content, a column per style (the largest of its
    long-side sizes), or per style and exact size where a job has exact frames (channel
    sizes), failures marked."""
    contents = list(dict.fromkeys(r.content for r in summary.renders))[:MAX_ROWS]
    exact = any(parse_size(r.size).exact for r in summary.renders)

    def column(record: RenderRecord) -> str:
        return f"{record.style} @ {parse_size(record.size).label}" if exact else record.style

    styles: dict[str, str] = {}
    for record in summary.renders:
        styles.setdefault(column(record), record.style_images[0][0])
    style_names = list(styles)[:MAX_COLS]
    best: dict[tuple[str, str], RenderRecord] = {}
    for record in summary.renders:
        key = (record.content, column(record))
        pixels = parse_size(record.size).pixels
        if key not in best or pixels > parse_size(best[key].size).pixels:
            best[key] = record

    def thumb(data: bytes | None, name: str) -> Image.Image | None:
        if data is None:
            return None
        try:
            return fit_long_side(decode(data, name, settings.max_input_pixels), CELL)
        except InputError:
            return None

    def input_thumb(uri: str) -> Image.Image | None:
        try:
            return thumb(read_input(uri, settings), uri)
        except InputError:
            return None

    masks = {r.content: r.mask for r in summary.renders if r.mask}

    def content_thumb(uri: str) -> Image.Image | None:
        """The content, its protected region tinted green where it has a mask."""
        img = input_thumb(uri)
        if img is None or uri not in masks:
            return img
        source = masks[uri][0]
        limits = settings.max_input_pixels, settings.min_input_side
        try:  # the renders' decoders and limits (workers/render.py): a hostile mask is none
            if source == "alpha":
                mask = decode_alpha(read_input(uri, settings), uri, *limits)
            else:
                mask = decode(read_input(source, settings), source, *limits).convert("L")
        except InputError:
            return img
        if mask is None:
            return img
        tinted = Image.blend(img, Image.new("RGB", img.size, (0, 190, 110)), 0.45)
        return Image.composite(tinted, img, mask.resize(img.size))

    labels = {
        uri: f"{i + 1}. {uri.rsplit('/', 1)[-1]}" + (" (mask tinted)" if uri in masks else "")
        for i, uri in enumerate(contents)
    }
    cells = {}
    for (content, style), record in best.items():
        if content in labels and style in style_names:
            ok = record.status in ("done", "skipped")
            data = storage.get(record.key) if ok else None
            cells[(labels[content], style)] = thumb(data, record.key)
    return contact_sheet(
        [(labels[c], content_thumb(c)) for c in contents],
        [(s, input_thumb(styles[s])) for s in style_names],
        cells,
    )
