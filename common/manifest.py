"""Job manifests: the document a user writes, parsed and checked in one pass.

Structure is checked by pydantic; everything that needs the outside world (files, globs, key
collisions) is checked by ``common.expand``. Both report every problem with its path.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from common.errors import ManifestError, Problem
from common.params import RenderParams, Strict
from common.schedule import check as check_schedule

KEY_FIELDS = (
    "job", "content", "style", "size", "width", "height", "channel", "preset", "id", "ext", "slot",
)  # fmt: skip
DEFAULT_KEY = "{content}/{style}-{size}.{ext}"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")

Name = Annotated[str, Field(pattern=_NAME.pattern)]
Uri = Annotated[str, Field(min_length=1, max_length=2048)]


class Output(Strict):
    location: Uri
    key: str = DEFAULT_KEY
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100)
    # C2PA content credentials on every output: true, false, or unset (the deployment's
    # STYLEBATCH_C2PA_SIGN)
    credentials: bool | None = None

    @field_validator("key")
    @classmethod
    def _template_fields(cls, key: str) -> str:
        """Plain ``{field}`` only: a format spec (``{size:>20000000}``) or a conversion
        (``{content!r}``) could make keys of any length, or odd ones."""
        try:
            parsed = [p for p in string.Formatter().parse(key) if p[1] is not None]
        except ValueError as exc:
            raise ValueError(f"malformed key template: {exc}") from None
        fancy = [
            f"{{{n}{'!' + c if c else ''}{':' + f if f else ''}}}"
            for _, n, f, c in parsed
            if f or c
        ]
        if fancy:
            raise ValueError(
                f"key fields take no format spec or conversion: {', '.join(fancy)}; "
                "write them as {field}"
            )
        fields = {name for _, name, _, _ in parsed}
        unknown = sorted(fields - set(KEY_FIELDS))
        if unknown:
            raise ValueError(f"unknown key field(s) {unknown}; use {list(KEY_FIELDS)}")
        return key


class Glob(Strict):
    """Many inputs at once: a shell-style pattern over local paths or S3 keys."""

    glob: Uri


class Prefix(Strict):
    """Every image under a folder or S3 prefix, recursively."""

    prefix: Uri


class Shot(Strict):
    """One content image with what to keep: ``focus`` (x, y in 0..1) is where exact frames
    are cropped around (without it, the image's own centre of detail); ``mask`` protects
    regions from the style: an image (grey or alpha, white keeps the photo) or ``alpha``, the
    content's own alpha channel; ``mask_strength`` below 1 protects partly."""

    uri: Uri
    focus: tuple[float, float] | None = None
    mask: Uri | None = None
    mask_strength: float = Field(1.0, ge=0, le=1)

    @field_validator("focus")
    @classmethod
    def _in_unit_square(cls, focus: tuple[float, float] | None) -> tuple[float, float] | None:
        if focus is not None and not all(0 <= v <= 1 for v in focus):
            raise ValueError("focus is [x, y], each within 0..1 (0, 0 is the top left)")
        return focus


ContentEntry = Uri | Shot | Glob | Prefix


class WeightedImage(Strict):
    uri: Uri
    weight: float = Field(1.0, gt=0, le=1000)


class Style(Strict):
    """One look: a single image, or several blended by weight."""

    name: Name
    image: Uri | None = None
    images: list[WeightedImage] | None = Field(None, min_length=1, max_length=8)
    params: RenderParams | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Style:
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' or 'images'")
        return self

    def weighted(self) -> list[tuple[str, float]]:
        if self.image is not None:
            return [(self.image, 1.0)]
        assert self.images is not None
        return [(item.uri, item.weight) for item in self.images]


class Schedule(Strict):
    """When a manifest fires on its own (used by ``stylebatch beat``)."""

    cron: str = Field(min_length=9, max_length=120)
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _valid(self) -> Schedule:
        check_schedule(self.cron, self.timezone)
        return self


class Notify(Strict):
    """Who hears when the job ends: a POST of its counts, failures, cost and summary URI."""

    webhook: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]


class Pick(Strict):
    """One render of the manifest's cross product to keep (``only``): its content (a URI as
    the content list gives it, or the content's name), style name and size."""

    content: Uri
    style: Name
    size: int | Annotated[str, Field(min_length=1, max_length=64)]


class Manifest(Strict):
    name: Name
    priority: int = Field(5, ge=0, le=9)
    output: Output
    content: list[ContentEntry] = Field(min_length=1, max_length=10_000)
    styles: list[Style] = Field(min_length=1, max_length=1_000)
    params: RenderParams = RenderParams()
    weights: str | None = Field(None, min_length=1, max_length=2048)
    schedule: Schedule | None = None
    notify: Notify | None = None
    # only these (content, style, size) of the cross product (a re-render of a selection)
    only: list[Pick] | None = Field(None, min_length=1, max_length=100_000)

    @field_validator("styles")
    @classmethod
    def _unique_style_names(cls, styles: list[Style]) -> list[Style]:
        names = [s.name for s in styles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"style names must be unique; repeated: {dupes}")
        return styles


def _where(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a manifest path, e.g. ``styles[1].images[0].weight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "Glob", "Prefix", "int", "list[int]", "DecaySchedule") or (
            isinstance(part, str) and part.startswith(("constrained-", "list[", "function-"))
        ):
            continue  # union branch labels carry no meaning for the user
        else:
            out += f".{part}" if out else str(part)
    return out


def _models_at(loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The manifest models that the location ``loc`` (without its last part) points into."""
    models: list[type[BaseModel]] = [Manifest]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        named = [m for m in models if m.__name__ == part]  # a union branch label
        if named:
            models = named
            continue
        found: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part)
            if field is not None:
                found += _model_types(field.annotation)
        models = found or models
    return models


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _model_types(arg)]


def _suggestion(loc: tuple[Any, ...]) -> str:
    """'; did you mean ...?' for a misspelt field name (``size`` -> ``sizes``)."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    known = [name for model in _models_at(loc) for name in model.model_fields]
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def problems_of(exc: ValidationError) -> list[Problem]:
    seen: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        where = _where(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field" + _suggestion(tuple(err["loc"]))
        seen.setdefault(where, [])
        if message not in seen[where]:
            seen[where].append(message)
    return [Problem(where, " | ".join(messages)) for where, messages in seen.items()]


def load_document(path: Path) -> dict[str, Any]:
    """Read YAML or JSON (by extension; YAML otherwise), naming the file and line on error."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(source, [Problem("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(source, [Problem("", f"cannot read: {exc}")]) from None
    return read_document(text, source, as_json=path.suffix.lower() == ".json")


MAX_DIGITS = (
    18  # an integer in a manifest: no setting needs more, and JSON's readers differ past 2^53
)


def read_document(text: str, source: str, as_json: bool = False) -> dict[str, Any]:
    """A manifest's text as a mapping: JSON (``as_json``, or text opening with ``{`` that is
    JSON) else YAML. Every fault is a ManifestError naming where: bad syntax, nesting too
    deep, or a number no setting could take (too many digits, not finite)."""
    try:
        data = _parse(text, as_json)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            source, [Problem(f"line {exc.lineno}", f"invalid JSON: {exc.msg}")]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ManifestError(source, [Problem(where, f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise ManifestError(source, [Problem("", "nested too deeply")]) from None
    except ValueError as exc:  # Python's limit on integer digits, met while parsing
        message = f"a number is too long to be a setting ({exc})"
        raise ManifestError(source, [Problem("", message)]) from None
    if not isinstance(data, dict):
        raise ManifestError(source, [Problem("", "a manifest must be a mapping at the top")])
    problems = list(_odd_numbers(data, ""))
    if problems:
        raise ManifestError(source, problems)
    return data


def _parse(text: str, as_json: bool) -> Any:
    if as_json:
        return json.loads(text)
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass  # a YAML flow mapping, then
    return yaml.safe_load(text)


def _odd_numbers(value: Any, where: str, depth: int = 0) -> Any:
    """Numbers no setting takes, with their path: integers over MAX_DIGITS digits, floats
    that are not finite."""
    if depth > 64:
        yield Problem(where, "nested too deeply")
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS:
        yield Problem(where, f"integer of {len(str(abs(value)))} digits; at most {MAX_DIGITS}")
    elif isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        yield Problem(where, "not a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _odd_numbers(v, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _odd_numbers(v, f"{where}[{i}]", depth + 1)


def parse_manifest(data: dict[str, Any], source: str) -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(source, problems_of(exc)) from None
