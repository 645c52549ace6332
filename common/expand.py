"""A manifest expanded into renders: every content x style x size, each with an id derived from
its canonical inputs and parameters, so the same render is recognised within and across jobs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from common.access import not_allowed, reachable
from common.errors import InputError, ManifestError, Problem
from common.imageio import EXTENSIONS
from common.inputs import identify, require_s3_access, weights_identity
from common.listing import Budget, find_inputs
from common.manifest import Glob, Manifest, Prefix, Shot, load_document, parse_manifest
from common.render_ids import RenderIds
from common.schedule import slot_label
from common.settings import Settings
from common.sizes import parse_size
from common.uris import Location, canonical_uri, check_relative_key, is_s3, parse_location

# Bump when the engine's output for the same inputs and parameters changes.
ENGINE_GENERATION = 4  # 2: exact W2, replicate padding; 3: W2 presets, chroma TV, fp32 W2;
# 4: W2 root on CUDA by Newton-Schulz, float64 products around the target root, chroma TV 6,
# standard on draft's pyramid
ENGINE_VERSION = f"stylebatch-engine/{ENGINE_GENERATION}"  # what summaries and outputs name
RESERVED_KEYS = ("summary.json", "contact_sheet.png")  # the latest job's, beside the outputs
RECORDS = "_jobs"  # each job's own summary and contact sheet: _jobs/<job id>/...
RANDOM_WEIGHTS = re.compile(r"^random(:\d{1,10})?$")


@dataclass(frozen=True)
class Render:
    id: str
    content: str
    content_name: str
    style: str
    style_images: tuple[tuple[str, float], ...]
    size: int | str  # a long side, or an exact frame "WxH" / channel name (common/sizes.py)
    params: dict[str, Any] = field(hash=False)
    key: str
    weights: str
    # uri -> content identity (common/inputs.py) of the content, style images and S3 weights
    identities: dict[str, str] = field(hash=False)
    focus: tuple[float, float] | None = None  # where exact frames are cropped (None: auto)
    mask: str = ""  # a protection mask's canonical URI, "alpha" (the content's), or none
    mask_strength: float = 1.0
    # (style name, key): other style names of the manifest that resolve to this very render
    # (same images, parameters and size); rendered once, its output written to each key too
    copies: tuple[tuple[str, str], ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this render's output is written to: its own, then its copies'."""
        return (self.key, *(key for _, key in self.copies))

    def to_dict(self) -> dict[str, Any]:
        """Shallow (``dataclasses.asdict`` deep-copies params: slow for 10,000 renders)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Render:
        data = dict(data)
        data["style_images"] = tuple((u, float(w)) for u, w in data["style_images"])
        data.setdefault("identities", {})  # recorded before inputs were identified
        data["focus"] = tuple(data["focus"]) if data.get("focus") else None
        data["copies"] = tuple((s, k) for s, k in data.get("copies") or ())
        return cls(**data)


@dataclass
class JobPlan:
    job_id: str
    name: str
    source: str
    manifest: Manifest
    location: Location
    renders: list[Render]
    weights: str
    # outputs asked for twice and made once, by design: the same render at the same key (a
    # content listed twice, or matched by two globs; a style or size given twice)
    duplicates: int = 0
    slot: datetime | None = None
    problems: list[Problem] = field(default_factory=list)  # inputs missing, too big, refused
    signed: bool = False  # outputs get content credentials: resolved at plan time, in the ids

    @property
    def format(self) -> str:
        return self.manifest.output.format


def render_id(
    content: str,
    style_images: tuple[tuple[str, float], ...],
    size: int | str,
    params: dict[str, Any],
    weights: str,
    identities: dict[str, str],
    focus: tuple[float, float] | None = None,
    mask: tuple[str, float] | None = None,
    output: dict[str, Any] | None = None,
) -> str:
    """Names the inputs by URI and by content: a replaced object is a new render. ``output``
    (see ``output_identity``) names everything else that changes the output's bytes."""
    total = sum(w for _, w in style_images)
    canonical = {
        "generation": ENGINE_GENERATION,
        "content": [content, identities.get(content, "")],
        "style": sorted(
            [uri, round(w / total, 9), identities.get(uri, "")] for uri, w in style_images
        ),
        "size": size,
        "params": params,
        "weights": [weights, identities.get(weights, "")],
        "focus": list(focus) if focus else None,
        "mask": [mask[0], identities.get(mask[0], ""), mask[1]] if mask else None,
        "output": output,
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def signer_identity(settings: Settings) -> str:
    """Who signs content credentials, as it stands at plan time: the algorithm plus the
    SHA-256 of the certificate chain (STYLEBATCH_C2PA_CERT), so a rotated certificate is a new
    render. Where the chain cannot be read here (it lives on the workers), its path stands in:
    a planner that can read it names the same signer differently, which re-renders (never
    skips wrongly). The key is never read: the chain certifies it."""
    alg = settings.c2pa_alg.strip().lower()
    try:
        return f"{alg}:sha256:{hashlib.sha256(Path(settings.c2pa_cert).read_bytes()).hexdigest()}"
    except (OSError, ValueError):
        return f"{alg}:path:{settings.c2pa_cert}"


def output_identity(output: Any, settings: Settings) -> dict[str, Any]:
    """Everything but the inputs and parameters that changes an output's bytes: its format,
    its quality (jpeg, webp; png ignores it, but one rule is simpler than a per-format one),
    and whether it is signed, resolved now (manifest, else STYLEBATCH_C2PA_SIGN), with the
    signer. Turning credentials on, or changing the quality, renders existing outputs again."""
    signed = settings.signs(output.credentials)
    return {
        "format": output.format,
        "quality": output.quality,
        "credentials": signer_identity(settings) if signed else None,
    }


def canonical_weights(spec: str, base_dir: Path) -> str:
    """'imagenet', 'random[:seed]', an s3:// URI, or an absolute local path."""
    spec = spec.strip()
    if spec in ("imagenet",) or RANDOM_WEIGHTS.match(spec):
        return "random:0" if spec == "random" else spec
    return canonical_uri(spec, base_dir)


def content_name(uri: str) -> str:
    """A key-safe name that keeps the stem's letters: accents are dropped from Latin letters
    (``ümlaut`` -> ``umlaut``), other scripts' letters are kept, anything else becomes ``_``."""
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    plain = "".join(c for c in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(c))
    safe = "".join(
        c if c.isalnum() or c in "._-" else "_" for c in unicodedata.normalize("NFC", plain)
    )
    return safe.strip("._") or "image"


def plan_job(
    path: Path, settings: Settings, weights: str | None = None, slot: datetime | None = None
) -> JobPlan:
    """Load, validate and expand a manifest file. Raises ManifestError with every problem."""
    return plan_document(
        load_document(path), str(path), path.resolve().parent, settings, weights, slot
    )


def plan_document(
    data: dict[str, Any],
    source: str,
    base_dir: Path,
    settings: Settings,
    weights: str | None = None,
    slot: datetime | None = None,
) -> JobPlan:
    """Validate and expand a parsed manifest (a file's or an S3 object's)."""
    try:
        manifest = parse_manifest(data, source)
    except ManifestError as exc:  # also name missing inputs, so one pass shows everything
        raw = _raw_input_problems(data, base_dir, settings)
        raise ManifestError(source, exc.problems + raw) from None
    return expand(manifest, source, base_dir, settings, weights, slot)


def confined_uri(text: str, base_dir: Path, settings: Settings) -> str:
    """The canonical URI of an input the manifest names, if it lies inside the allowed
    inputs; ValueError otherwise. Nothing is looked at outside them, and the message never
    repeats the text (it may name what the submitter must not learn about)."""
    try:
        uri = canonical_uri(text, base_dir)
    except ValueError as exc:
        raise ValueError(_unnamed(str(exc), text)) from None
    if not reachable(uri, settings.allowed_inputs):
        raise ValueError(not_allowed(settings.allowed_inputs))
    return uri


def _unnamed(message: str, text: str) -> str:
    """A URI's parse error without the URI (the field's path locates it)."""
    return message.replace(repr(text), "the URI").replace(text, "the URI")


def _missing(where: str, text: str, base_dir: Path, settings: Settings) -> Problem | None:
    """A problem if ``text`` is outside the allowed inputs, cannot be a URI, or names a local
    file that is not there; confined before anything is looked at."""
    try:
        uri = confined_uri(text, base_dir, settings)
    except ValueError as exc:
        return Problem(where, str(exc))
    if not is_s3(uri) and not Path(uri).is_file():
        return Problem(where, f"file not found: {uri}")
    return None


def _raw_input_problems(data: dict[str, Any], base_dir: Path, settings: Settings) -> list[Problem]:
    """Missing inputs in a manifest that failed structural validation."""
    found: list[Problem | None] = []
    content = data.get("content")
    for i, entry in enumerate(content if isinstance(content, list) else []):
        if isinstance(entry, str) and entry:
            found.append(_missing(f"content[{i}]", entry, base_dir, settings))
        elif isinstance(entry, dict) and isinstance(entry.get("uri"), str) and entry["uri"]:
            found.append(_missing(f"content[{i}].uri", entry["uri"], base_dir, settings))
    styles = data.get("styles")
    for i, style in enumerate(styles if isinstance(styles, list) else []):
        if not isinstance(style, dict):
            continue
        if isinstance(style.get("image"), str):
            found.append(_missing(f"styles[{i}].image", style["image"], base_dir, settings))
        images = style.get("images")
        for j, item in enumerate(images if isinstance(images, list) else []):
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                where = f"styles[{i}].images[{j}].uri"
                found.append(_missing(where, item["uri"], base_dir, settings))
    return [p for p in found if p is not None]


def expand(
    manifest: Manifest,
    source: str,
    base_dir: Path,
    settings: Settings,
    weights: str | None = None,
    slot: datetime | None = None,
) -> JobPlan:
    problems: list[Problem] = []

    def attempt(where: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (ValueError, InputError) as exc:
            problems.append(Problem(where, str(exc)))
            return None

    def unnamed(fn: Any, text: str, *args: Any) -> Any:  # the error without the text
        try:
            return fn(text, *args)
        except ValueError as exc:
            raise ValueError(_unnamed(str(exc), text)) from None

    location = attempt(
        "output.location", unnamed, parse_location, manifest.output.location, base_dir
    )
    spec = weights or manifest.weights or settings.weights
    weights_spec = attempt("weights", unnamed, canonical_weights, spec, base_dir)
    repeats: list[int] = [0]  # content entries that name a content already listed
    contents = _contents(manifest, base_dir, settings, attempt, problems, repeats)
    inputs = dict(contents)  # uri -> where the manifest names it
    named = {where: uri for uri, where in contents.items()}
    shots = {  # uri -> its Shot entry, for the contents given as one (bad URIs named above)
        named[f"content[{i}].uri"]: e
        for i, e in enumerate(manifest.content)
        if isinstance(e, Shot) and f"content[{i}].uri" in named
    }
    focus = {uri: e.focus for uri, e in shots.items() if e.focus}
    masks: dict[str, tuple[str, float]] = {}  # content uri -> (mask uri or "alpha", strength)
    for uri, e in shots.items():
        if e.mask is None:
            continue
        where = f"{contents[uri].removesuffix('.uri')}.mask"
        mask = (
            e.mask
            if e.mask == "alpha"
            else attempt(where, confined_uri, e.mask, base_dir, settings)
        )
        if mask is not None:
            masks[uri] = (mask, e.mask_strength)
            if mask != "alpha":
                inputs.setdefault(mask, where)
    styles = []
    for i, style in enumerate(manifest.styles):
        images = []
        for j, (uri, weight) in enumerate(style.weighted()):
            where = f"styles[{i}].image" if style.image else f"styles[{i}].images[{j}].uri"
            problem = _missing(where, uri, base_dir, settings)
            if problem:
                problems.append(problem)
                continue
            images.append((canonical_uri(uri, base_dir), weight))
            inputs.setdefault(images[-1][0], where)
        styles.append((style, tuple(images), manifest.params.merged(style.params)))

    total = len(contents) * sum(len(params.sizes) for _, _, params in styles)
    picks = _picks(manifest, contents, base_dir)
    if picks is not None:
        total = min(total, len(manifest.only or ()))
    if total > settings.max_renders:
        limit = settings.max_renders
        problems.append(
            Problem(
                "", f"expands to {total} renders; the limit is {limit} (STYLEBATCH_MAX_RENDERS)"
            )
        )
    if problems:
        raise ManifestError(source, problems)
    identities, found = identify(inputs, settings)
    weights_id, problem = weights_identity(weights_spec, settings)
    if weights_id:
        identities[weights_spec] = weights_id
    found += [problem] if problem else []

    renders: list[Render] = []
    by_key: dict[str, str] = {}
    seen: dict[str, int] = {}  # render id -> its place in ``renders``
    copies: dict[str, list[tuple[str, str]]] = {}  # render id -> (style name, key) of copies
    keys_of: dict[str, set[str]] = {}  # render id -> every key it is written to
    duplicates = 0
    ext = EXTENSIONS[manifest.output.format]
    output = output_identity(manifest.output, settings)
    made = RenderIds(ENGINE_GENERATION, weights_spec, identities, output)  # render_id, fast
    per_style = [  # what every render of a style shares, made once
        (style, images, params, params.resolved(), [(z, parse_size(z)) for z in params.sizes])
        for style, images, params in styles
    ]
    for content in contents:
        cname = content_name(content)
        mask = masks.get(content)
        content_part = made.content_part(content, focus.get(content), mask)
        for place, (style, images, params, resolved, frames) in enumerate(per_style):
            ids = {
                u: identities[u]
                for u in (content, *(u for u, _ in images), weights_spec, *(mask or ())[:1])
                if u in identities
            }  # shared by the style's renders of this content (never changed)
            for size, frame in frames:
                if picks is not None and not _picked(picks, content, cname, style.name, size):
                    continue
                rid = made.of(content_part, made.style_part(place, images, size, resolved))
                key = manifest.output.key.format(
                    job=manifest.name,
                    content=cname,
                    style=style.name,
                    size=frame.label,  # the size as written: 512, 1200x628, meta-story
                    width=frame.width or frame.long,
                    height=frame.height or frame.long,
                    channel=frame.channel or f"long{frame.long}",
                    preset=params.preset,
                    id=rid[:12],
                    ext=ext,
                    slot=slot_label(slot) if slot else "adhoc",
                )
                if rid in seen:  # the same render again: at the same key, or a copy
                    if key in keys_of[rid]:
                        duplicates += 1  # collapsed by design: one render, one key
                        continue
                    keys_of[rid].add(key)
                    _check_key(key, source, problems)
                    _claim_key(by_key, key, f"{content} x {style.name} @ {size}", source, problems)
                    copies[rid].append((style.name, key))
                    continue
                _check_key(key, source, problems)
                _claim_key(by_key, key, f"{content} x {style.name} @ {size}", source, problems)
                seen[rid] = len(renders)
                copies[rid], keys_of[rid] = [], {key}
                renders.append(
                    Render(
                        rid,
                        content,
                        cname,
                        style.name,
                        images,
                        size,
                        resolved,
                        key,
                        weights_spec,
                        ids,
                        focus.get(content),
                        *(mask or ("", 1.0)),
                    )
                )
    if picks is not None:
        _unpicked(picks, problems)
        if problems:
            raise ManifestError(source, problems)
    renders = [
        dataclasses.replace(r, copies=tuple(copies[r.id])) if copies[r.id] else r for r in renders
    ]
    return JobPlan(
        job_id=job_id(manifest, weights_spec, slot, [r.id for r in renders]),
        name=manifest.name,
        source=source,
        manifest=manifest,
        location=location,
        renders=renders,
        weights=weights_spec,
        signed=output["credentials"] is not None,
        duplicates=duplicates + repeats[0] * sum(len(p.sizes) for _, _, p in styles),
        slot=slot,
        problems=found,
    )


def _picks(manifest: Manifest, contents: dict[str, str], base_dir: Path) -> dict | None:
    """``only`` as (content, style, size) -> [its place, whether a render matched], the
    content as the canonical URI where the pick names one of the manifest's (else as given:
    a content name); None without ``only``."""
    if manifest.only is None:
        return None
    found: dict[tuple[str, str, str], list[Any]] = {}
    for i, pick in enumerate(manifest.only):
        content = pick.content
        if content not in contents:
            with contextlib.suppress(Exception):  # compared, never looked at
                uri = canonical_uri(content, base_dir)
                content = uri if uri in contents else content
        found.setdefault((content, pick.style, str(pick.size)), [i, False])
    return found


def _picked(picks: dict, content: str, cname: str, style: str, size: Any) -> bool:
    hit = False
    for key in ((content, style, str(size)), (cname, style, str(size))):
        if key in picks:
            picks[key][1] = hit = True
    return hit


def _unpicked(picks: dict, problems: list[Problem]) -> None:
    for i, matched in sorted(picks.values()):
        if not matched:
            message = "matches no render of this manifest (its content, style and size)"
            problems.append(Problem(f"only[{i}]", message))


def _check_key(key: str, source: str, problems: list[Problem]) -> None:
    try:
        check_relative_key(key)
        if key in RESERVED_KEYS or key.split("/", 1)[0] == RECORDS:
            raise ValueError(f"output key {key!r} is reserved for the job's own files")
    except ValueError as exc:
        problems.append(Problem("output.key", str(exc)))
        raise ManifestError(source, problems) from None


def _claim_key(
    by_key: dict[str, str], key: str, what: str, source: str, problems: list[Problem]
) -> None:
    """Each key is written by one render: two different renders at one key are refused."""
    if key in by_key:
        message = (
            f"two different renders map to {key!r} ({by_key[key]} and {what}); add "
            "{content}, {style}, {size}, {channel} or {id}"
        )
        problems.append(Problem("output.key", message))
        raise ManifestError(source, problems)
    by_key[key] = what


def job_id(
    manifest: Manifest, weights: str, slot: datetime | None = None, render_ids: list[str] = ()
) -> str:
    """From the manifest, the slot and the renders (whose ids name their inputs' content):
    resubmitting finds the same job, unless an input was replaced since."""
    label = slot_label(slot) if slot else None
    blob = json.dumps(
        [manifest.model_dump(mode="json"), weights, label, sorted(render_ids)], sort_keys=True
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{manifest.name}-{label}-{digest}" if label else f"{manifest.name}-{digest}"


def _contents(
    manifest: Manifest,
    base_dir: Path,
    settings: Settings,
    attempt: Any,
    problems: list[Problem],
    repeats: list[int],
) -> dict[str, str]:
    """Every content image's canonical URI, in order, with where the manifest names it. Each
    is confined before it is looked at; globs and prefixes are listed only inside the allowed
    inputs, within one budget for the whole manifest (common/listing.py)."""
    out: dict[str, str] = {}
    budget = Budget.of(settings)
    for i, entry in enumerate(manifest.content):
        where = f"content[{i}]"
        if isinstance(entry, str | Shot):
            uri = entry if isinstance(entry, str) else entry.uri
            here = where if isinstance(entry, str) else f"{where}.uri"
            problem = _missing(here, uri, base_dir, settings)
            if problem:
                problems.append(problem)
            else:
                canon = canonical_uri(uri, base_dir)
                repeats[0] += canon in out
                out.setdefault(canon, here)
            continue
        pattern = entry.glob if isinstance(entry, Glob) else entry.prefix
        label = "glob" if isinstance(entry, Glob) else "prefix"
        here = f"{where}.{label}"
        try:
            canon = pattern if is_s3(pattern) else canonical_uri(pattern, base_dir)
        except ValueError as exc:
            problems.append(Problem(here, _unnamed(str(exc), pattern)))
            continue
        if is_s3(canon):
            require_s3_access()
        found = attempt(here, find_inputs, canon, isinstance(entry, Prefix), settings, budget)
        if found == []:
            problems.append(Problem(here, f"matches no image: {pattern}"))
        for uri in found or []:
            repeats[0] += uri in out
            out.setdefault(uri, here)
    return out
